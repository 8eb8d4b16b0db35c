//! The `cairn` command's code: its commands, the workloads and their one runner, benchmarks,
//! the chart writer and the kill -9 torture. Built on the `cairn` library's public API like any
//! other host; nothing here is part of that API.
#![deny(missing_docs)]

pub mod allocator;
pub mod barriers;
pub mod bench_cmd;
pub mod bench_files;
pub mod cache_bench;
pub mod chart;
pub mod checkpoints_cmd;
pub mod cli;
pub mod memspeed_bench;
pub mod metrics_server;
pub mod rebase_bench;
pub mod report;
pub mod rescale_bench;
pub mod restore_bench;
pub mod run;
pub mod savepoint_bench;
pub mod savepoint_cmd;
pub mod stream;
pub mod torture;
pub mod ttl_bench;
pub mod tune;
pub mod upload_floor;
pub mod wordcount;
pub mod workload;
