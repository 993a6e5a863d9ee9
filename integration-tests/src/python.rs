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

/// Runs `examples-python/<script>` with the virtualenv's python and `AMQP_URL` set to
/// `amqp_url`, killing it if it has not exited within `bound`; returns its exit status
/// and everything it printed on stdout.
///
/// # Errors
/// The virtualenv could not be made or the script not started.
pub async fn run_example(
    script: &str,
    amqp_url: &str,
    bound: std::time::Duration,
) -> Result<(std::process::ExitStatus, String)> {
    run_example_with(script, amqp_url, &[], bound).await
}

/// Like [`run_example`], with more environment variables (`env`) for the script.
///
/// # Errors
/// As [`run_example`].
pub async fn run_example_with(
    script: &str,
    amqp_url: &str,
    env: &[(&str, &str)],
    bound: std::time::Duration,
) -> Result<(std::process::ExitStatus, String)> {
    use std::io::Read as _;
    let python = venv_python()?;
    let mut child = Command::new(python)
        .arg(script)
        .current_dir(examples_dir())
        .envs(env.iter().copied())
        .env("AMQP_URL", amqp_url)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {script}"))?;
    let mut stdout = child.stdout.take().context("its stdout")?;
    let output = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let exited = crate::wait_for(bound, || {
        let done = matches!(child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().context("its exit status")?;
    let output = output.await.context("reading its output")?;
    Ok((status, output))
}
