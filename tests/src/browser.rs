//! [`Browser`]: Debian's headless Chromium, driven through ChromeDriver's WebDriver protocol
//! (the `fantoccini` client), for the dashboard's browser test.
//!
//! ChromeDriver runs as a [`Service`] on a free loopback port, with its log in the test's
//! directory. Chromium starts with a fresh profile in that directory and with its
//! background networking off: this machine's network is closed, and Chromium's update,
//! sync and field-trial requests would otherwise be refused at every start. The programs
//! are `/usr/bin/chromium` and `/usr/bin/chromedriver` (`scripts/install-deps.sh
//! --for-tests` installs them), or `CARTDB_CHROMIUM` and `CARTDB_CHROMEDRIVER`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::ports::free_port;
use crate::process::Service;
use crate::wait::Deadline;

/// How long ChromeDriver may take to accept a session.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium session and the ChromeDriver that drives it.
pub struct Browser {
    client: Client,
    // Dropped after the client: killing ChromeDriver also ends its Chromium.
    _driver: Service,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").finish_non_exhaustive()
    }
}

fn program(variable: &str, default: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.exists() {
        bail!(
            "{} not found (set {variable}, or run scripts/install-deps.sh --for-tests to install Debian's chromium and chromium-driver)",
            path.display()
        );
    }
    Ok(path)
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a window of `width` × `height`,
    /// keeping logs and the browser profile under `dir`.
    ///
    /// # Errors
    /// When Chromium or ChromeDriver is missing, or no session starts in time.
    pub async fn start(dir: &Path, width: u32, height: u32) -> anyhow::Result<Self> {
        let chromium = program("CARTDB_CHROMIUM", "/usr/bin/chromium")?;
        let chromedriver = program("CARTDB_CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let port = free_port()?;
        let mut driver = Service::new("chromedriver", chromedriver, dir.join("chromedriver.log"))
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ]);
        driver.start()?;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let options = json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let url = format!("http://127.0.0.1:{port}");
        let mut deadline = Deadline::after(START_TIMEOUT);
        let client = loop {
            driver.ensure_running()?;
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if deadline.has_passed() => bail!(
                    "ChromeDriver on {url} started no session within {START_TIMEOUT:?} (log: {}): {e}",
                    driver.log_path().display()
                ),
                Err(_) => deadline.pause().await,
            }
        };
        Ok(Self {
            client,
            _driver: driver,
        })
    }

    /// Opens `url` in the session's window.
    ///
    /// # Errors
    /// When the browser cannot load it.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("loading {url}"))
    }

    /// Runs `script` (a function body that may `return` a value, or a promise of one) in
    /// the page, with `args` as its `arguments`.
    ///
    /// # Errors
    /// When the script throws or the session is gone.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.client
            .execute(script, args)
            .await
            .with_context(|| format!("running in the page: {script}"))
    }

    /// Saves a PNG of the window to `path`, creating its directory.
    ///
    /// # Errors
    /// When the screenshot cannot be taken or written.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (closing Chromium) and stops ChromeDriver.
    ///
    /// # Errors
    /// When the session cannot be closed cleanly.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client
            .close()
            .await
            .context("closing the browser session")
    }
}
