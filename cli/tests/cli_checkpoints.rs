//! `cairn checkpoints list | inspect | verify | gc` through the real binary, on three kinds of
//! directory:
//! - a healthy root of several jobs (written by `cairn run`): everything is served, exit 0, and
//!   `gc --apply` deletes nothing;
//! - a root where one job is damaged (a garbage `_metadata`, a missing file): the other jobs are
//!   still listed and verified, the damage is named, and the exit code is 1;
//! - directories that are not checkpoint roots (empty, unrelated files and directories, a path
//!   that does not exist, an S3 prefix of unrelated objects): an error naming the directory,
//!   exit 1, and `gc --apply` deletes nothing there.
//!
//! `gc` deletes nothing while any metadata under the root is damaged (it may reference any
//! job's files) but still names the orphans it found.
//!
//! Regression tests of the "checkpoint protocol hardening" issue (test honesty). Before it,
//! `list` stopped at the first unreadable job, `inspect` showed missing files as present and
//! exited 0, `gc` stopped at the first damaged job without a word about the others and took any
//! directory for a job (deleting `chk-*/...` and `shared/<sha>` look-alikes in it), and an
//! empty or missing directory listed as an empty root with exit 0 (a missing one was created).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A `shared/<sha256>` look-alike name.
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// What a `cairn` invocation did.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn cairn_with(args: &[&str], env: &[(String, String)]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .output()
        .expect("run cairn");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn cairn(args: &[&str]) -> Out {
    cairn_with(args, &[])
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `n` short `cairn run` jobs into `<dir>/checkpoints` (two retained checkpoints each);
/// returns the root and the job names, sorted.
fn root_with_jobs(
    dir: &Path,
    n: usize,
) -> Result<(PathBuf, Vec<String>), Box<dyn std::error::Error>> {
    let root = dir.join("checkpoints");
    for i in 0..n {
        let out = cairn(&[
            "run",
            "--workload",
            "update",
            "--records",
            "1000000",
            "--keys",
            "1000",
            "--checkpoint-interval",
            "20ms",
            "--retained",
            "2",
            "--checkpoint-dir",
            s(&root),
            "--working-dir",
            s(&dir.join(format!("work-{i}"))),
        ]);
        assert!(out.ok(), "cairn run: {out}");
    }
    let jobs = subdirs(&root)?;
    assert_eq!(jobs.len(), n, "{jobs:?}");
    Ok((root, jobs))
}

fn subdirs(dir: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Committed checkpoint ids of a job directory, ascending (read from the files, not from cairn).
fn committed(job_dir: &Path) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut ids: Vec<u64> = subdirs(job_dir)?
        .iter()
        .filter_map(|n| n.strip_prefix("chk-")?.parse().ok())
        .filter(|id| job_dir.join(format!("chk-{id}/_metadata")).is_file())
        .collect();
    ids.sort_unstable();
    assert!(!ids.is_empty(), "{} has no checkpoint", job_dir.display());
    Ok(ids)
}

/// Every file under `dir` (relative path -> content), to compare before and after `gc`.
fn tree(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, Box<dyn std::error::Error>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

fn write(path: &Path, bytes: &[u8]) -> TestResult {
    std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// `list --json` rows.
fn list_json(url: &str) -> Result<(Out, Vec<Value>), Box<dyn std::error::Error>> {
    let out = cairn(&["checkpoints", "list", url, "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
    Ok((out, rows))
}

fn rows_of(rows: &[Value], job: &str) -> usize {
    rows.iter().filter(|r| r["job"] == job).count()
}

#[test]
fn healthy_root_is_listed_inspected_verified_and_gc_keeps_every_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (root, jobs) = root_with_jobs(dir.path(), 2)?;
    let url = s(&root);

    let out = cairn(&["checkpoints", "list", url]);
    assert!(out.ok(), "{out}");
    for job in &jobs {
        assert!(out.stdout.contains(job.as_str()), "{out}");
    }
    let (out, rows) = list_json(url)?;
    assert!(out.ok(), "{out}");
    for job in &jobs {
        let ids = committed(&root.join(job))?;
        assert_eq!(rows_of(&rows, job), ids.len(), "{out}");
    }

    // One job's directory: only its checkpoints.
    let job_url = root.join(&jobs[0]);
    let (out, rows) = list_json(s(&job_url))?;
    assert!(out.ok(), "{out}");
    assert_eq!(rows_of(&rows, &jobs[0]), rows.len(), "{out}");

    let latest = *committed(&job_url)?.last().ok_or("no checkpoint")?;
    let chk = format!("chk-{latest}");
    let out = cairn(&["checkpoints", "inspect", s(&job_url), &chk]);
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout.contains(&format!("job {}  {chk}", jobs[0])),
        "{out}"
    );
    let out = cairn(&["checkpoints", "inspect", s(&job_url), &chk, "--json"]);
    assert!(out.ok(), "{out}");
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert!(
        v["files"].as_array().is_some_and(|f| !f.is_empty()),
        "{out}"
    );
    // inspect takes one job, not a root of two.
    let out = cairn(&["checkpoints", "inspect", url, &chk]);
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("not one job's directory"), "{out}");

    for deep in [false, true] {
        let mut args = vec!["checkpoints", "verify", url];
        if deep {
            args.push("--deep");
        }
        let out = cairn(&args);
        assert!(out.ok(), "{out}");
        assert!(out.stdout.contains(": 0 problem(s)"), "{out}");
    }

    let before = tree(&root)?;
    let out = cairn(&["checkpoints", "gc", url, "--grace", "0s"]);
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("0 orphan file(s)"), "{out}");
    let out = cairn(&["checkpoints", "gc", url, "--grace", "0s", "--apply"]);
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("0 orphan file(s)"), "{out}");
    assert_eq!(
        tree(&root)?,
        before,
        "gc --apply changed a healthy root: {out}"
    );
    Ok(())
}

/// One job (sorted first, so it is read first) has a garbage `_metadata` in its latest
/// checkpoint; the two others each carry a stale file of a crashed checkpoint.
#[test]
fn garbage_metadata_in_one_job_leaves_the_other_jobs_served() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (root, jobs) = root_with_jobs(dir.path(), 3)?;
    let url = s(&root);
    let damaged = &jobs[0];
    let ids = committed(&root.join(damaged))?;
    let (older, latest) = (ids[0], *ids.last().ok_or("no checkpoint")?);
    assert!(older < latest, "two retained checkpoints expected: {ids:?}");
    write(
        &root.join(format!("{damaged}/chk-{latest}/_metadata")),
        b"this is not checkpoint metadata",
    )?;
    let stale = "chk-999999/slot-0/MANIFEST-000001.zst";
    for job in &jobs[1..] {
        write(&root.join(job).join(stale), b"left by a crashed checkpoint")?;
    }
    let bad_chk = format!("{damaged} chk-{latest}");

    // list: the other jobs and the damaged job's readable checkpoint are listed; exit 1.
    let out = cairn(&["checkpoints", "list", url]);
    assert!(!out.ok(), "{out}");
    for job in &jobs[1..] {
        assert!(out.stdout.contains(job.as_str()), "{out}");
    }
    assert!(out.stdout.contains(&format!("chk-{older}")), "{out}");
    assert!(out.stderr.contains(&bad_chk), "{out}");
    assert!(out.stderr.contains("metadata"), "{out}");
    let (out, rows) = list_json(url)?;
    assert!(!out.ok(), "{out}");
    assert_eq!(rows_of(&rows, damaged), ids.len() - 1, "{out}");
    for job in &jobs[1..] {
        assert_eq!(
            rows_of(&rows, job),
            committed(&root.join(job))?.len(),
            "{out}"
        );
    }

    // verify: names the damaged checkpoint, checks the rest; exit 1.
    let out = cairn(&["checkpoints", "verify", url]);
    assert!(!out.ok(), "{out}");
    assert!(out.stdout.contains(&format!("{bad_chk}: ")), "{out}");
    let total: usize = jobs
        .iter()
        .map(|j| committed(&root.join(j)).map_or(0, |ids| ids.len()))
        .sum();
    assert!(
        out.stdout
            .contains(&format!("verified {total} checkpoint(s)")),
        "{out}"
    );

    // inspect: the damaged checkpoint is an error; its readable sibling is shown, with exit 1
    // because its reference counts leave the damaged one out.
    let job_url = root.join(damaged);
    let out = cairn(&[
        "checkpoints",
        "inspect",
        s(&job_url),
        &format!("chk-{latest}"),
    ]);
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("metadata"), "{out}");
    let out = cairn(&[
        "checkpoints",
        "inspect",
        s(&job_url),
        &format!("chk-{older}"),
    ]);
    assert!(!out.ok(), "{out}");
    assert!(
        out.stdout.contains(&format!("job {damaged}  chk-{older}")),
        "{out}"
    );
    assert!(out.stderr.contains(&bad_chk), "{out}");

    // gc --apply: the damaged metadata may reference files of any job, so nothing is deleted;
    // the other jobs' orphans are still found and named; exit 1.
    let before = tree(&root)?;
    let out = cairn(&["checkpoints", "gc", url, "--grace", "0s", "--apply"]);
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains(damaged.as_str()), "{out}");
    assert!(out.stderr.contains(&format!("chk-{latest}")), "{out}");
    for job in &jobs[1..] {
        assert!(
            out.stdout.contains(&format!("orphan {job}/{stale}")),
            "{out}"
        );
    }
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("deleted ")),
        "{out}"
    );
    assert_eq!(tree(&root)?, before, "gc deleted files under damage: {out}");
    Ok(())
}

/// A shared file the latest checkpoint of one job references is gone.
#[test]
fn missing_file_in_one_job_is_named_and_the_other_jobs_served() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (root, jobs) = root_with_jobs(dir.path(), 2)?;
    let url = s(&root);
    let damaged = &jobs[0];
    let job_url = root.join(damaged);
    let latest = *committed(&job_url)?.last().ok_or("no checkpoint")?;
    let meta: Value = serde_json::from_slice(&std::fs::read(
        job_url.join(format!("chk-{latest}/_metadata")),
    )?)?;
    let object = meta["slots"][0]["shared"][0]["object"]
        .as_str()
        .ok_or("the checkpoint has no shared file")?
        .to_string();
    std::fs::remove_file(root.join(&object))?;
    let bad_chk = format!("{damaged} chk-{latest}");

    let out = cairn(&["checkpoints", "list", url]);
    assert!(!out.ok(), "{out}");
    for job in &jobs {
        assert!(out.stdout.contains(job.as_str()), "{out}");
    }
    assert!(out.stderr.contains(&bad_chk), "{out}");
    assert!(out.stderr.contains("missing"), "{out}");
    let (out, rows) = list_json(url)?;
    assert!(!out.ok(), "{out}");
    let row = rows
        .iter()
        .find(|r| r["job"] == damaged.as_str() && r["id"] == latest)
        .ok_or("no row for the damaged checkpoint")?;
    assert_eq!(row["missing_files"], 1, "{out}");
    assert_eq!(
        rows_of(&rows, &jobs[1]),
        committed(&root.join(&jobs[1]))?.len()
    );

    let out = cairn(&["checkpoints", "verify", url]);
    assert!(!out.ok(), "{out}");
    assert!(out.stdout.contains(&format!("{bad_chk}: ")), "{out}");
    assert!(out.stdout.contains(&object), "{out}");

    let out = cairn(&[
        "checkpoints",
        "inspect",
        s(&job_url),
        &format!("chk-{latest}"),
    ]);
    assert!(!out.ok(), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&object))
        .ok_or("the missing file is not listed")?;
    assert!(line.contains("MISSING"), "{out}");
    assert!(out.stderr.contains(&object), "{out}");
    let other = root.join(&jobs[1]);
    let other_latest = *committed(&other)?.last().ok_or("no checkpoint")?;
    let out = cairn(&[
        "checkpoints",
        "inspect",
        s(&other),
        &other_latest.to_string(),
    ]);
    assert!(out.ok(), "{out}");
    assert!(!out.stdout.contains("MISSING"), "{out}");

    // gc collects orphans only: a missing file changes nothing it may delete.
    let before = tree(&root)?;
    let out = cairn(&["checkpoints", "gc", url, "--grace", "0s", "--apply"]);
    assert!(out.stdout.contains("0 orphan file(s)"), "{out}");
    assert_eq!(tree(&root)?, before, "{out}");
    Ok(())
}

/// Every command on `url` fails naming it; `gc --apply` leaves `dir` as it was. Runs every
/// command before asserting, so a failure lists all that went wrong.
fn assert_not_a_root(url: &str, dir: Option<&Path>) -> TestResult {
    let before = dir.map(tree).transpose()?;
    let commands: [&[&str]; 7] = [
        &["gc", "--grace", "0s", "--apply"],
        &["gc", "--grace", "0s"],
        &["list"],
        &["list", "--json"],
        &["verify"],
        &["verify", "--deep"],
        &["inspect", "chk-1"],
    ];
    let mut wrong = Vec::new();
    for cmd in commands {
        let mut args = vec!["checkpoints", cmd[0], url];
        args.extend_from_slice(&cmd[1..]);
        let out = cairn(&args);
        let named = out.stderr.contains(url) && out.stderr.contains("not a checkpoint directory");
        if out.code != Some(1) || !named || out.stdout.contains("deleted") {
            wrong.push(format!("{args:?}: {out}"));
        }
    }
    if let (Some(dir), Some(before)) = (dir, before) {
        let after = tree(dir)?;
        let gone: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        if after != before {
            wrong.push(format!(
                "files changed under {}; gone: {gone:?}",
                dir.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

#[test]
fn empty_directory_is_not_a_checkpoint_root() -> TestResult {
    let dir = tempfile::tempdir()?;
    assert_not_a_root(s(dir.path()), Some(dir.path()))?;
    assert_not_a_root(&format!("file://{}", s(dir.path())), Some(dir.path()))?;
    assert!(subdirs(dir.path())?.is_empty());
    Ok(())
}

#[test]
fn missing_directory_is_an_error_and_is_not_created() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-dir");
    assert_not_a_root(s(&missing), None)?;
    assert!(!missing.exists(), "a command created {}", missing.display());
    Ok(())
}

/// Unrelated files, including `chk-<id>/...` and `shared/<sha256>` look-alikes, that the old
/// `gc` took for a job's orphans and deleted.
#[test]
fn unrelated_directory_is_not_a_checkpoint_root_and_gc_deletes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    write(&d.join("README.txt"), b"not checkpoints")?;
    write(&d.join("photos/cat.jpg"), b"\xff\xd8\xff")?;
    write(&d.join("archive/chk-3/notes.txt"), b"notes")?;
    write(
        &d.join(format!("archive/shared/{SHA}")),
        b"a file named by a hash",
    )?;
    write(&d.join("archive/chk-4/slot-0/OPTIONS-000007.zst"), b"x")?;
    std::fs::create_dir_all(d.join("empty-subdir"))?;
    assert_not_a_root(s(d), Some(d))?;
    // The same directory named as if it were one job.
    assert_not_a_root(s(&d.join("archive")), Some(d))?;
    Ok(())
}

/// A root with a job and a directory that is not one: the job is served, the directory is
/// named as skipped and never collected.
#[test]
fn stray_directory_in_a_root_is_skipped_and_never_collected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (root, jobs) = root_with_jobs(dir.path(), 1)?;
    let url = s(&root);
    write(&root.join("scratch/chk-1/slot-0/MANIFEST-000001.zst"), b"x")?;
    write(&root.join(format!("scratch/shared/{SHA}")), b"y")?;
    let before = tree(&root)?;
    let mut wrong = Vec::new();
    for args in [
        vec!["checkpoints", "gc", url, "--grace", "0s", "--apply"],
        vec!["checkpoints", "list", url],
        vec!["checkpoints", "verify", url],
    ] {
        let out = cairn(&args);
        if !out.ok() || !out.stderr.contains("skipped scratch/") || out.stdout.contains("scratch") {
            wrong.push(format!("{args:?}: {out}"));
        }
    }
    let after = tree(&root)?;
    let gone: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    if after != before {
        wrong.push(format!("files changed; gone: {gone:?}"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let (out, rows) = list_json(url)?;
    assert!(out.ok(), "{out}");
    assert_eq!(rows_of(&rows, &jobs[0]), rows.len());
    assert!(!rows.is_empty());
    Ok(())
}

/// The S3 leg of the non-root case: a prefix of unrelated objects (S3 has no empty
/// directories; the look-alikes are the dangerous part).
#[test]
fn unrelated_s3_prefix_is_not_a_checkpoint_root_and_gc_deletes_nothing() -> TestResult {
    let Some(t) = support::s3_target("cli_checkpoints") else {
        return Ok(());
    };
    let storage = cairn_snapshot::StorageRoot::from_url(&t.url, &t.options)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names = [
        "README.txt".to_string(),
        "archive/chk-3/notes.txt".into(),
        "archive/chk-4/slot-0/OPTIONS-000007.zst".into(),
        format!("archive/shared/{SHA}"),
    ];
    let listed = |storage: &cairn_snapshot::StorageRoot| {
        rt.block_on(storage.list(storage.root())).map(|l| {
            let mut v: Vec<String> = l.into_iter().map(|m| m.location.to_string()).collect();
            v.sort();
            v
        })
    };
    for n in &names {
        let mut p = storage.root().clone();
        for part in n.split('/') {
            p = p.join(part);
        }
        rt.block_on(storage.put(&p, bytes::Bytes::from_static(b"unrelated")))?;
    }
    let before = listed(&storage)?;
    assert_eq!(before.len(), names.len());
    let mut env: Vec<(String, String)> = t
        .child_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("CAIRN_S3_ENDPOINT".into(), t.endpoint.clone()));
    let mut wrong = Vec::new();
    for url in [t.url.clone(), format!("{}/archive", t.url)] {
        let url = url.as_str();
        for args in [
            vec!["checkpoints", "gc", url, "--grace", "0s", "--apply"],
            vec!["checkpoints", "list", url],
            vec!["checkpoints", "verify", url],
        ] {
            let out = cairn_with(&args, &env);
            let named =
                out.stderr.contains(url) && out.stderr.contains("not a checkpoint directory");
            if out.code != Some(1) || !named {
                wrong.push(format!("{args:?}: {out}"));
            }
        }
    }
    let after = listed(&storage)?;
    if after != before {
        wrong.push(format!("objects changed: {before:?} -> {after:?}"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}
