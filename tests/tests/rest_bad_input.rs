//! Bad input on every endpoint: malformed or non-object JSON, missing, empty, mistyped or
//! over-long (257-byte) fields, bodies over 64 KiB, wrong methods and unknown paths. The API
//! must answer each with a 4xx (never a 5xx) and a JSON `{"error": ..}` that names the
//! problem (the offending field, where there is one).
//!
//! Each test collects every violation before failing, so one run shows them all.

use anyhow::Result;
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, Reply};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "bad-input-admin-token";
const JSON: Option<&str> = Some("application/json");

async fn start() -> Result<Cluster> {
    Cluster::start(ClusterOptions {
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..ClusterOptions::default()
    })
    .await
}

/// Checks one refusal: the status (exact, or any 4xx when `None`), a JSON error, and that
/// the error mentions `field` (case-insensitively) when given.
fn check(
    problems: &mut Vec<String>,
    case: &str,
    reply: &Reply,
    status: Option<u16>,
    field: Option<&str>,
) {
    let status_ok = match status {
        Some(expected) => reply.status == expected,
        None => (400..500).contains(&reply.status),
    };
    let error = reply.error().unwrap_or_default();
    let named = field.is_none_or(|f| error.to_lowercase().contains(&f.to_lowercase()));
    if !status_ok || error.is_empty() || !named {
        let wanted = status.map_or_else(|| "4xx".to_owned(), |s| s.to_string());
        let naming = field.map_or_else(String::new, |f| format!(" naming {f:?}"));
        problems.push(format!(
            "{case}: wanted {wanted} with a JSON error{naming}, got {reply}"
        ));
    }
}

fn fail_on(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

async fn post(api: &ApiClient, path: &str, body: &str) -> Result<Reply> {
    api.raw(Method::POST, path, JSON, body.as_bytes().to_vec())
        .await
}

/// Insert and delete refuse malformed JSON, non-object JSON, an empty body, a missing body
/// content type, and missing, empty or mistyped `userid` / `item_name` with 400 (415 allowed
/// for the content type) and an error naming the field; nothing is written.
#[tokio::test]
async fn malformed_cart_bodies_are_refused_with_400_naming_the_problem() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let mut problems = Vec::new();
    for path in ["/api/insert", "/api/delete"] {
        for (case, body) in [
            ("truncated JSON", r#"{"userid": "u1", "item_name": "#),
            ("not JSON", "userid=u1&item_name=pork"),
            ("a JSON array", r#"["u1", "pork"]"#),
            ("a JSON string", r#""u1""#),
            ("JSON null", "null"),
            ("an empty body", ""),
        ] {
            check(
                &mut problems,
                &format!("{path} {case}"),
                &post(api, path, body).await?,
                Some(400),
                None,
            );
        }
        for (case, body, field) in [
            ("missing userid", json!({"item_name": "pork"}), "userid"),
            ("missing item_name", json!({"userid": "u1"}), "item_name"),
            (
                "empty userid",
                json!({"userid": "", "item_name": "pork"}),
                "userid",
            ),
            (
                "empty item_name",
                json!({"userid": "u1", "item_name": ""}),
                "item_name",
            ),
            (
                "numeric userid",
                json!({"userid": 42, "item_name": "pork"}),
                "userid",
            ),
            (
                "null item_name",
                json!({"userid": "u1", "item_name": null}),
                "item_name",
            ),
        ] {
            let reply = api.post_json(path, &body).await?;
            check(
                &mut problems,
                &format!("{path} {case}"),
                &reply,
                Some(400),
                Some(field),
            );
        }
        let body = br#"{"userid": "u1", "item_name": "pork"}"#.to_vec();
        let reply = api.raw(Method::POST, path, None, body).await?;
        let status = if reply.status == 415 {
            Some(415)
        } else {
            Some(400)
        };
        check(
            &mut problems,
            &format!("{path} without a content type"),
            &reply,
            status,
            None,
        );
    }
    let cart = api.list_all("u1").await?;
    if !cart.items().is_empty() {
        problems.push(format!("a refused request wrote to u1's cart: {cart}"));
    }
    fail_on(&problems);
    Ok(())
}

/// Ids are limited to 256 bytes (bytes, not characters): a 257-byte `userid`, `item_name`
/// or `category` is refused with 400 naming the field on every endpoint, and a 256-byte
/// `userid` is accepted.
#[tokio::test]
async fn ids_longer_than_256_bytes_are_refused_and_256_accepted() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let mut problems = Vec::new();
    let at_limit = "é".repeat(128); // 256 bytes, 128 characters
    let over = format!("{at_limit}a"); // 257 bytes
    for path in ["/api/insert", "/api/delete"] {
        for (field, body) in [
            ("userid", json!({"userid": over, "item_name": "pork"})),
            ("item_name", json!({"userid": "u2", "item_name": over})),
        ] {
            let reply = api.post_json(path, &body).await?;
            check(
                &mut problems,
                &format!("{path} 257-byte {field}"),
                &reply,
                Some(400),
                Some(field),
            );
        }
    }
    let reply = api.list_all(&over).await?;
    check(
        &mut problems,
        "list_all 257-byte userid",
        &reply,
        Some(400),
        Some("userid"),
    );
    let reply = api.list_category(&over).await?;
    check(
        &mut problems,
        "list_category 257-byte category",
        &reply,
        Some(400),
        Some("category"),
    );

    let reply = api.insert(&at_limit, "pork").await?;
    if reply.status != 200 {
        problems.push(format!("a 256-byte userid was refused: {reply}"));
    } else if api.list_all(&at_limit).await?.qty_of("pork") != 1 {
        problems.push("the 256-byte user's cart lacks the pork".to_owned());
    }
    fail_on(&problems);
    Ok(())
}

/// A body over 64 KiB is refused with 413 and a JSON error on every endpoint taking a body.
#[tokio::test]
async fn bodies_over_64_kib_are_refused_with_413() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let mut problems = Vec::new();
    let padding = "x".repeat(65 * 1024 + 1);
    let cart_body = json!({"userid": padding, "item_name": "pork"}).to_string();
    let product_body =
        json!({"productid": "big", "name": padding, "category": "1", "price": 1}).to_string();
    for (path, body) in [
        ("/api/insert", &cart_body),
        ("/api/delete", &cart_body),
        ("/api/products", &product_body),
    ] {
        check(
            &mut problems,
            &format!("{path} 65 KiB body"),
            &post(api, path, body).await?,
            Some(413),
            None,
        );
    }
    fail_on(&problems);
    Ok(())
}

/// A known path with the wrong method is refused with 405 and a JSON error; an unknown path
/// gets 404 with a JSON error.
#[tokio::test]
async fn wrong_methods_and_unknown_paths_get_json_errors() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let mut problems = Vec::new();
    for (method, path) in [
        (Method::GET, "/api/insert"),
        (Method::GET, "/api/delete"),
        (Method::PUT, "/api/insert"),
        (Method::POST, "/api/list_all?userid=u3"),
        (Method::POST, "/api/list_category?category=1"),
        (Method::DELETE, "/api/products"),
        (Method::POST, "/api/cluster"),
    ] {
        let reply = api.raw(method.clone(), path, JSON, b"{}".to_vec()).await?;
        check(
            &mut problems,
            &format!("{method} {path}"),
            &reply,
            Some(405),
            None,
        );
    }
    let reply = api.get("/api/no_such_endpoint").await?;
    check(
        &mut problems,
        "GET /api/no_such_endpoint",
        &reply,
        Some(404),
        None,
    );
    fail_on(&problems);
    Ok(())
}

/// `list_all` without `userid`, `list_category` without `category`, or either with an empty
/// value, is refused with 400 naming the parameter.
#[tokio::test]
async fn list_queries_without_their_parameter_are_refused() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let mut problems = Vec::new();
    for (path, field) in [
        ("/api/list_all", "userid"),
        ("/api/list_all?userid=", "userid"),
        ("/api/list_all?user=u4", "userid"),
        ("/api/list_category", "category"),
        ("/api/list_category?category=", "category"),
    ] {
        let reply = api.raw(Method::GET, path, None, Vec::new()).await?;
        check(
            &mut problems,
            &format!("GET {path}"),
            &reply,
            Some(400),
            Some(field),
        );
    }
    fail_on(&problems);
    Ok(())
}

/// Adding a product with a malformed or non-object body, a missing or empty name / product id / category,
/// or a price that is not a non-negative integer is refused with 400 naming the field; the
/// catalog is unchanged.
#[tokio::test]
async fn malformed_products_are_refused_with_400() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let mut problems = Vec::new();
    let before = api.products().await?.products().len();
    for (case, body) in [
        ("not JSON", "{oops"),
        ("a JSON array", r#"["778", "dates", "4", 5]"#),
    ] {
        let reply = post(api, "/api/products", body).await?;
        check(
            &mut problems,
            &format!("products: {case}"),
            &reply,
            Some(400),
            None,
        );
    }
    let good = json!({"productid": "777", "name": "figs", "category": "4", "price": 5});
    for (field, value) in [
        ("productid", Value::Null),
        ("name", Value::Null),
        ("category", Value::Null),
        ("price", Value::Null),
        ("name", json!("")),
        ("productid", json!("")),
        ("price", json!(-3)),
        ("price", json!("five")),
    ] {
        let mut body = good.clone();
        if value.is_null() {
            body.as_object_mut().map(|o| o.remove(field));
        } else {
            body[field] = value.clone();
        }
        let reply = api.add_product(&body).await?;
        check(
            &mut problems,
            &format!("products: {field} = {value}"),
            &reply,
            Some(400),
            Some(field),
        );
    }
    let after = api.products().await?.products().len();
    if after != before {
        problems.push(format!(
            "refused products changed the catalog: {before} -> {after} products"
        ));
    }
    fail_on(&problems);
    Ok(())
}
