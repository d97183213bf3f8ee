//! The HTTP side of the commands that read or change a running cluster through its API
//! server: a GET or POST that answers JSON, with the admin token when one is given, and the API's
//! `{"error": ...}` turned into an error naming the URL and the status.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// How long one request may take: a policy deploy verifies on every gateway and waits for
/// them to switch (the API server gives up on a request after 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);

/// Where the API server is and how to authenticate, shared by every command that asks it.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the API server.
    #[arg(long, env = "CARTDB_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Bearer token for the admin endpoints (when the API server has one configured).
    #[arg(long, env = "CARTDB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// Prints `document` as indented JSON with `--json`, otherwise as `text` renders it.
pub fn print_document(document: &Value, json: bool, text: impl FnOnce(&Value) -> String) {
    if json {
        println!("{document:#}");
    } else {
        print!("{}", text(document));
    }
}

/// `GET {api}{path}` with `query`, answered with JSON.
///
/// # Errors
/// The API unreachable, an answer that is not JSON, or an error status (with the API's
/// `error` text).
pub fn get_json(args: &ApiArgs, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
    request_json(args, path, |client, url| client.get(url).query(query))
}

/// `POST {api}{path}` with the JSON `body`, answered with JSON.
///
/// # Errors
/// As [`get_json`].
pub fn post_json(args: &ApiArgs, path: &str, body: &Value) -> anyhow::Result<Value> {
    request_json(args, path, |client, url| client.post(url).json(body))
}

/// `POST {api}{path}` with `query` and no body, answered with JSON.
///
/// # Errors
/// As [`get_json`].
pub fn post_query(args: &ApiArgs, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
    request_json(args, path, |client, url| client.post(url).query(query))
}

/// `POST {api}{path}` with `query` and the raw `body` (`Content-Type: application/wasm`),
/// answered with JSON.
///
/// # Errors
/// As [`get_json`].
pub fn post_bytes(
    args: &ApiArgs,
    path: &str,
    query: &[(&str, String)],
    body: Vec<u8>,
) -> anyhow::Result<Value> {
    request_json(args, path, |client, url| {
        client
            .post(url)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(body)
    })
}

/// Sends the request `build` makes for `{api}{path}`, with the admin token if given, and
/// reads a JSON answer.
fn request_json(
    args: &ApiArgs,
    path: &str,
    build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let url = format!("{}{path}", args.api.trim_end_matches('/'));
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let mut request = build(&client, &url);
        if let Some(token) = &args.admin_token {
            request = request.bearer_auth(token);
        }
        let reply = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .with_context(|| format!("{url} did not answer JSON"))?;
        if !status.is_success() {
            bail!("{url} answered {status}: {}", body["error"]);
        }
        Ok(body)
    })
}
