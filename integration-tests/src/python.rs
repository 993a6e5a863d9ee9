//! The Python side of the black-box tests: the virtualenv in `examples-python/` that
//! holds pika (and whatever else `requirements.txt` names), made on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// The `examples-python/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples-python")
}

/// The virtualenv's python with `requirements.txt` (pika, Celery) installed; made if
/// missing
/// (`scripts/test.sh` normally makes it first).
///
/// # Errors
/// `python3 -m venv` or `pip install` failed.
pub fn venv_python() -> Result<PathBuf> {
    let dir = examples_dir();
    let venv = dir.join(".venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("run python3 -m venv")?;
        ensure!(
            status.success(),
            "python3 -m venv {} failed",
            venv.display()
        );
    }
    let has_packages = Command::new(&python)
        .args(["-c", "import pika, celery"])
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("run {}", python.display()))?;
    if !has_packages.success() {
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(dir.join("requirements.txt"))
            .status()
            .context("run pip install")?;
        ensure!(status.success(), "pip install -r requirements.txt failed");
    }
    Ok(python)
}
