//! `cartdb bench`: bad arguments are refused with an error naming the flag, and the exit
//! code reflects the failure rate of a run (against a tiny stand-in HTTP server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartdb"))
        .arg("bench")
        .args(args)
        .env_remove("CARTDB_ADMIN_TOKEN")
        .output()
        .expect("cannot run cartdb")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Each bad value is refused before anything is sent, naming its flag and the problem.
#[test]
fn bad_arguments_name_the_flag() {
    let cases: [(&[&str], &[&str]); 10] = [
        (&["--clients", "0"], &["--clients"]),
        (&["--clients", "many"], &["--clients"]),
        (&["--users", "0"], &["--users"]),
        (&["--duration", "0s"], &["--duration", "greater than 0"]),
        (&["--duration", "5 parsecs"], &["--duration"]),
        (&["--warmup", "soon"], &["--warmup"]),
        (&["--mix", "insert=0,delete=0"], &["--mix", "more than 0"]),
        (&["--mix", "buy=5"], &["--mix", "unknown operation \"buy\""]),
        (&["--mix", "insert=1,insert=2"], &["--mix", "twice"]),
        (&["--api", "not a url"], &["--api"]),
    ];
    for (args, needles) in cases {
        let output = bench(args);
        assert!(!output.status.success(), "{args:?} was accepted");
        let text = stderr(&output);
        for needle in needles {
            assert!(text.contains(needle), "{args:?}: {text:?} lacks {needle:?}");
        }
    }
}

/// An API server that cannot be reached is a clear error and a non-zero exit.
#[test]
fn an_unreachable_api_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let output = bench(&["--api", &api, "--duration", "1s", "--warmup", "0s"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot reach the API server"));
}

/// A healthy server: the run exits 0 and `--json` prints a summary with every op kind.
#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_run_succeeds_and_prints_json() {
    let api = spawn_api(false).await;
    let output = run_bench(&api, &["--json", "--mix", "insert=2,delete=1,list_all=1"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(summary["total_ops"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["failed"], 0);
    for kind in ["insert", "delete", "list_all"] {
        assert!(
            summary["per_kind"][kind]["ops"].as_u64().unwrap() > 0,
            "{summary}"
        );
    }
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

/// A server failing every cart request: the summary counts the 503s, and the exit is 1.
#[tokio::test(flavor = "multi_thread")]
async fn too_many_failures_exit_non_zero() {
    let api = spawn_api(true).await;
    let output = run_bench(&api, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("503:"));
    assert!(
        stderr(&output).contains("requests failed"),
        "{}",
        stderr(&output)
    );
}

async fn run_bench(api: &str, extra: &[&str]) -> Output {
    let base = [
        "--clients",
        "2",
        "--users",
        "3",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ];
    let args: Vec<String> = base
        .into_iter()
        .chain(["--seed", "7", "--api", api])
        .chain(extra.iter().copied())
        .map(str::to_owned)
        .collect();
    // The binary blocks; keep it off the runtime that serves the stand-in API.
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args)
    })
    .await
    .unwrap()
}

/// A stand-in for the API server: a catalog of two products, and 200 for every cart
/// request, or 503 when `failing`. HTTP/1.1 with keep-alive, as much as the bench needs.
async fn spawn_api(failing: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, failing));
        }
    });
    format!("http://{addr}")
}

async fn serve_connection(stream: TcpStream, failing: bool) {
    let mut stream = BufReader::new(stream);
    while let Some((request_line, body_len)) = read_head(&mut stream).await {
        let mut body = vec![0; body_len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, json) = answer(&request_line, failing);
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The request line and the content length, or `None` when the connection is done.
async fn read_head(stream: &mut BufReader<TcpStream>) -> Option<(String, usize)> {
    let mut request_line = String::new();
    stream
        .read_line(&mut request_line)
        .await
        .ok()
        .filter(|&n| n > 0)?;
    let mut body_len = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Some((request_line, body_len));
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            body_len = value.trim().parse().ok()?;
        }
    }
}

fn answer(request_line: &str, failing: bool) -> (&'static str, String) {
    if request_line.starts_with("GET /api/products") {
        let catalog = r#"{"products":[
            {"productid":"1","name":"pork","category":"1","price":61},
            {"productid":"2","name":"soap","category":"1","price":36}]}"#;
        return ("200 OK", catalog.to_owned());
    }
    if failing {
        return (
            "503 Service Unavailable",
            r#"{"error":"no gateway available"}"#.to_owned(),
        );
    }
    if request_line.starts_with("GET /api/list_all") {
        return ("200 OK", r#"{"userid":"u","response":[]}"#.to_owned());
    }
    (
        "200 OK",
        r#"{"message":"inserted into cart","qty":1}"#.to_owned(),
    )
}
