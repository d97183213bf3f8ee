//! The dashboard in a real browser: headless Chromium loads `/dashboard` on a running
//! cluster, shows six devices up and traffic in its charts, and shows a killed data node
//! down within a bounded time. Screenshots of both states are kept under
//! `target/dashboard-screenshots/` (CI keeps `target/` as its artifacts).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cartdb_tests::cluster::{TEST_ADMIN_TOKEN, workspace_root};
use cartdb_tests::{Browser, Cluster, ClusterOptions, wait_until};
use serde_json::Value;

/// How long the page may take to show a state the cluster is in: a few refreshes (2 s each)
/// after the gateways notice, which for a killed data node is its ZooKeeper session's end.
const SHOWN_WITHIN: Duration = Duration::from_secs(45);
const KILLED: usize = 3;

fn screenshots() -> PathBuf {
    workspace_root().join("target/dashboard-screenshots")
}

/// Reads what the page shows: devices up and down, the state of device `arguments[0]`,
/// whether the data loaded, chart canvases, gateway rows and any error shown.
const READ_PAGE: &str = r#"
    const rows = [...document.querySelectorAll('#devices tbody tr')];
    const killed = rows.find((r) => r.dataset.device === arguments[0]);
    return {
        up: rows.filter((r) => r.dataset.state === 'up').length,
        down: rows.filter((r) => r.dataset.state === 'down').length,
        killed: killed ? killed.dataset.state : null,
        loaded: document.getElementById('updated').dataset.loaded === 'true',
        charts: document.querySelectorAll('.chart canvas').length,
        gateways: document.querySelectorAll('#gateways tbody tr').length,
        error: document.getElementById('error').hidden ? null
            : document.getElementById('error').textContent,
    };
"#;

/// The traffic series as the page's own token fetches it.
const TRAFFIC: &str = "return fetch('/api/admin/traffic', {headers: {Authorization: \
    'Bearer ' + sessionStorage.getItem('cartdb-admin-token')}}).then((r) => r.json());";

async fn read_page(browser: &Browser) -> Result<Value> {
    browser
        .eval(READ_PAGE, vec![Value::from(KILLED.to_string())])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_devices_and_a_killed_data_node_going_down() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let browser = Browser::start(cluster.path(), 1400, 1500).await?;

    // Some cart traffic for the charts, running until the end of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let api = cluster.client().clone();
        let stop = Arc::clone(&stop);
        async move {
            let mut answered = 0u64;
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if api
                    .insert(&format!("shopper-{}", i % 50), "pork")
                    .await?
                    .status
                    == 200
                {
                    answered += 1;
                }
            }
            anyhow::Ok(answered)
        }
    });

    browser
        .goto(&format!(
            "{}/dashboard#token={TEST_ADMIN_TOKEN}",
            cluster.api_url()
        ))
        .await?;
    let shown = wait_until(
        "the dashboard to show 6 devices up and its charts",
        SHOWN_WITHIN,
        || async {
            let page = read_page(&browser).await?;
            let ready = page["loaded"] == true
                && page["up"] == 6
                && page["down"] == 0
                && page["gateways"] == 2
                && page["charts"].as_u64() >= Some(2);
            Ok(ready.then_some(page))
        },
    )
    .await?;
    // The charts' first point needs a finished 5-second bucket of traffic.
    wait_until("the ops chart to have traffic", SHOWN_WITHIN, || async {
        let series: Value = browser.eval(TRAFFIC, Vec::new()).await?;
        let busiest = series["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["ops_per_sec"].as_f64())
            .fold(0.0, f64::max);
        Ok((busiest > 0.0).then_some(()))
    })
    .await?;
    browser
        .screenshot(&screenshots().join("1-six-devices-up.png"))
        .await?;
    ensure!(shown["error"].is_null(), "the page shows an error: {shown}");

    cluster.kill_datanode(KILLED)?;
    let killed_at = Instant::now();
    let page = wait_until(
        "the dashboard to show the killed data node down",
        SHOWN_WITHIN,
        || async {
            let page = read_page(&browser).await?;
            Ok((page["killed"] == "down").then_some(page))
        },
    )
    .await?;
    eprintln!(
        "the page showed device {KILLED} down {:?} after the kill",
        killed_at.elapsed()
    );
    browser
        .screenshot(&screenshots().join("2-data-node-down.png"))
        .await?;
    ensure!(page["up"] == 5 && page["down"] == 1, "{page}");

    stop.store(true, Ordering::Relaxed);
    let answered = traffic.await??;
    ensure!(answered > 0, "the traffic got no answer");
    browser.close().await?;
    Ok(())
}
