//! Compiles the lazy-restore file system shim (`native/lazy_fs.cc`) against the headers of the
//! RocksDB that `rust-librocksdb-sys` builds. That crate declares `links = "rocksdb"` and exports
//! its include directory as `DEP_ROCKSDB_INCLUDE` to crates depending on it directly (hence the
//! direct dependency in Cargo.toml, same version and features as `rocksdb`'s). The defines,
//! language standard and `-fno-rtti` match that build (its build.rs), so the shim's view of
//! RocksDB's classes is the library's.

fn main() {
    println!("cargo::rerun-if-changed=native/lazy_fs.cc");
    println!("cargo::rerun-if-env-changed=DEP_ROCKSDB_INCLUDE");
    let Some(include) = std::env::var_os("DEP_ROCKSDB_INCLUDE") else {
        panic!("DEP_ROCKSDB_INCLUDE is not set: rust-librocksdb-sys must be a direct dependency");
    };
    let mut b = cc::Build::new();
    b.cpp(true)
        .file("native/lazy_fs.cc")
        .include(include)
        .define("NDEBUG", Some("1"))
        .define("HAVE_ALIGNED_NEW", None)
        .flag("-std=c++20")
        .warnings(false);
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "windows" {
        b.define("ROCKSDB_PLATFORM_POSIX", None)
            .define("ROCKSDB_LIB_IO_POSIX", None)
            .flag_if_supported("-fno-rtti");
    }
    if target_os == "linux" {
        b.define("OS_LINUX", None);
    }
    b.compile("cairn_lazy_fs");
}
