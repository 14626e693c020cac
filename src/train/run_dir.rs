//! The run directory as a unit: one process at a time writes into it (a lock), and a fresh
//! `train` never silently destroys the run already there.
//!
//! The lock is an advisory `flock` on `<dir>/.lock`, held for as long as the returned
//! [`RunDirLock`] lives. The operating system releases it when the process ends in any way,
//! `kill -9` included, so a crash never leaves a directory locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::checkpoint;
use super::run_log::RunLog;

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Files a training run writes; a fresh run refuses a directory holding any of the first five,
/// and `--overwrite` deletes all of them (and their `.tmp` leftovers of a killed write).
pub const RUN_FILES: [&str; 8] = [
    checkpoint::MODEL_FILE,
    checkpoint::STATE_FILE,
    checkpoint::MODEL_SIDECAR,
    checkpoint::STATE_SIDECAR,
    RunLog::METRICS_FILE,
    RunLog::PLOT_FILE,
    "generated.jsonl",
    "metrics.json",
];

/// How many of [`RUN_FILES`] mark a directory as holding a run.
const RUN_MARKERS: usize = 5;

/// An exclusive lock on a run directory, released on drop (or when the process dies).
#[derive(Debug)]
pub struct RunDirLock {
    _file: File,
    dir: PathBuf,
}

impl RunDirLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Creates `dir` if needed and locks it for this process; another process holding it is an
/// error naming the directory (two trainings into one `--out` would overwrite each other's files).
pub fn lock(dir: &Path) -> Result<RunDirLock> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{}: is a file, not a directory: the output of a run is a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(RunDirLock {
            _file: file,
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::WouldBlock) => bail!(
            "{}: another pepler-cuda process is using this run directory (it holds {}); wait \
             for it to finish or choose another directory",
            dir.display(),
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The files of a run found in `dir`, by name.
fn existing_run_files(dir: &Path) -> Vec<&'static str> {
    RUN_FILES[..RUN_MARKERS]
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect()
}

/// For a fresh (not resumed) run: `dir` must not hold a run, unless `overwrite`, in which case
/// the run's files are deleted. Never deletes anything else in the directory.
pub fn refuse_existing_run(dir: &Path, overwrite: bool) -> Result<()> {
    let found = existing_run_files(dir);
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{} already holds a run ({}): continue it with --resume (same options), or pass \
             --overwrite to delete it and start over, or choose another --out",
            dir.display(),
            found.join(", ")
        );
    }
    for path in RUN_FILES
        .iter()
        .flat_map(|f| [dir.join(f), dir.join(format!("{f}.tmp"))])
    {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
        }
    }
    eprintln!(
        "--overwrite: deleted the previous run in {} ({})",
        dir.display(),
        found.join(", ")
    );
    Ok(())
}

/// Everything `train` does to its output directory before loading any data: lock it, then
/// (fresh runs) refuse or clear an existing run, or (`resume`) require a resume state. Failing
/// here costs nothing; the returned lock must be held until the run's last file is written.
pub fn prepare(dir: &Path, resume: bool, overwrite: bool) -> Result<RunDirLock> {
    if resume && overwrite {
        bail!("--resume continues the run in the directory and --overwrite deletes it: pass one");
    }
    let lock = lock(dir)?;
    if resume {
        if !checkpoint::has_state(dir) {
            bail!(
                "{}: no resume state ({} with its copy {}) in this directory: nothing to resume; \
                 train without --resume to start a run",
                dir.display(),
                checkpoint::STATE_FILE,
                checkpoint::STATE_SIDECAR
            );
        }
    } else {
        refuse_existing_run(dir, overwrite)?;
    }
    Ok(lock)
}
