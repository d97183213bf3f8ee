//! The seed's REST semantics, end to end through a real cluster (ZooKeeper, 6 data nodes,
//! 2 gateways, the API server): what each endpoint answers, its error messages, and that
//! quantities, carts and the category index tell the truth.

use std::time::Duration;

use anyhow::{Context, Result};
use cartdb_tests::{Cluster, ClusterOptions, wait_until};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "rest-semantics-admin-token";

async fn start() -> Result<Cluster> {
    Cluster::start(ClusterOptions {
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..ClusterOptions::default()
    })
    .await
}

/// Each insert of the same (user, product) adds exactly one and answers
/// `{"message": "inserted into cart", "qty": N}` (JSON) with the new quantity.
#[tokio::test]
async fn insert_adds_one_per_request_and_answers_the_new_quantity() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    for expected in 1..=3 {
        let reply = api.insert("alice", "pork").await?;
        reply.expect_status(200);
        assert_eq!(reply.message(), Some("inserted into cart"), "{reply}");
        assert_eq!(reply.qty(), Some(expected), "{reply}");
        let content_type = reply.content_type.as_deref().unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "content type {content_type}"
        );
    }
    assert_eq!(api.list_all("alice").await?.qty_of("pork"), 3);
    assert_eq!(
        api.list_all("bob").await?.qty_of("pork"),
        0,
        "another user's cart is untouched"
    );
    Ok(())
}

/// A delete takes one away and answers `{"message": "deleted from cart", "qty": N}`; at
/// quantity 0 (or for an item never added) it is refused with 404
/// `{"error": "product is not available in cart"}` and nothing changes.
#[tokio::test]
async fn delete_removes_one_and_is_refused_at_zero() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    api.insert("alice", "soap").await?.expect_status(200);
    api.insert("alice", "soap").await?.expect_status(200);
    for expected in [1, 0] {
        let reply = api.delete("alice", "soap").await?;
        reply.expect_status(200);
        assert_eq!(reply.message(), Some("deleted from cart"), "{reply}");
        assert_eq!(reply.qty(), Some(expected), "{reply}");
    }
    for (user, item) in [("alice", "soap"), ("alice", "yogurt"), ("nobody", "pork")] {
        let reply = api.delete(user, item).await?;
        reply.expect_status(404);
        assert_eq!(
            reply.error(),
            Some("product is not available in cart"),
            "{reply}"
        );
    }
    api.insert("alice", "soap").await?.expect_status(200);
    assert_eq!(
        api.list_all("alice").await?.qty_of("soap"),
        1,
        "refused deletes must not have been recorded"
    );
    Ok(())
}

/// A product that is not in the catalog is refused by insert and delete with 404
/// `{"error": "product not available in inventory"}`.
#[tokio::test]
async fn unknown_product_is_not_available_in_inventory() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    for reply in [
        api.insert("alice", "unicorn").await?,
        api.delete("alice", "unicorn").await?,
    ] {
        reply.expect_status(404);
        assert_eq!(
            reply.error(),
            Some("product not available in inventory"),
            "{reply}"
        );
    }
    let cart = api.list_all("alice").await?;
    cart.expect_status(200);
    assert!(cart.items().is_empty(), "{cart}");
    Ok(())
}

/// `list_all` answers `{"userid", "response": [{"name", "productid", "price", "category",
/// "qty"}]}` with only the items whose quantity is above 0, sorted by name, with the
/// catalog's price, category and product id.
#[tokio::test]
async fn list_all_shows_positive_items_sorted_by_name_with_catalog_facts() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    for item in ["yogurt", "cereals", "pork", "cereals", "soap"] {
        api.insert("carol", item).await?.expect_status(200);
    }
    api.delete("carol", "soap").await?.expect_status(200);

    let cart = api.list_all("carol").await?;
    cart.expect_status(200);
    assert_eq!(cart.json.get("userid"), Some(&json!("carol")), "{cart}");
    let expected = [("cereals", 2), ("pork", 1), ("yogurt", 1)].map(|(n, q)| (n.to_owned(), q));
    assert_eq!(cart.item_quantities(), expected, "{cart}");

    let catalog = api.products().await?;
    catalog.expect_status(200);
    for item in cart.items() {
        let name = item["name"].as_str().context("item without a name")?;
        let product = catalog
            .product(name)
            .with_context(|| format!("{name} not in {catalog}"))?;
        for field in ["productid", "price", "category"] {
            assert_eq!(
                item.get(field),
                product.get(field),
                "{field} of {name}: {cart}"
            );
        }
    }
    Ok(())
}

/// A user who never added anything has an empty cart: 200 `{"userid": U, "response": []}`.
#[tokio::test]
async fn list_all_of_an_unknown_user_is_empty() -> Result<()> {
    let cluster = start().await?;
    let reply = cluster.client().list_all("never-seen-user").await?;
    reply.expect_status(200);
    assert_eq!(
        reply.json,
        json!({"userid": "never-seen-user", "response": []}),
        "{reply}"
    );
    Ok(())
}

/// `list_category` answers `{"category": C, "users": [..]}` listing, once each and sorted,
/// the users holding a product of category C with quantity above 0; a user whose last such
/// item is deleted is dropped (once the delete has reached every replica, polled).
#[tokio::test]
async fn list_category_lists_users_while_their_quantity_is_above_zero() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let catalog = api.products().await?;
    let category_of = |name: &str| -> Result<String> {
        let product = catalog
            .product(name)
            .with_context(|| format!("{name} not in {catalog}"))?;
        Ok(match &product["category"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let (pork, soap, yogurt) = (
        category_of("pork")?,
        category_of("soap")?,
        category_of("yogurt")?,
    );
    assert_eq!(
        pork, soap,
        "the seed catalog has pork and soap in one category"
    );
    assert_ne!(pork, yogurt);

    for (user, item) in [
        ("dave", "pork"),
        ("dave", "pork"),
        ("erin", "soap"),
        ("frank", "yogurt"),
    ] {
        api.insert(user, item).await?.expect_status(200);
    }
    let reply = api.list_category(&pork).await?;
    reply.expect_status(200);
    assert_eq!(reply.json.get("category"), Some(&json!(pork)), "{reply}");
    assert_eq!(
        reply.users(),
        ["dave", "erin"],
        "sorted, once each, only category {pork}"
    );
    assert_eq!(api.list_category(&yogurt).await?.users(), ["frank"]);

    api.delete("dave", "pork").await?.expect_status(200);
    assert!(
        api.list_category(&pork)
            .await?
            .users()
            .contains(&"dave".to_owned()),
        "dave still has 1 pork"
    );
    api.delete("dave", "pork").await?.expect_status(200);
    wait_until(
        "dave to leave the category",
        Duration::from_secs(10),
        || async {
            let users = api.list_category(&pork).await?.users();
            Ok((users == ["erin"]).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// A category held by more shoppers than one page holds is listed a page at a time: each
/// page in order and at most `limit` long, each shopper exactly once over all pages, and
/// `next` null on the last. A `limit` out of range or a malformed `after` is a 400 naming
/// the field.
#[tokio::test]
async fn list_category_pages_through_many_shoppers() -> Result<()> {
    const SHOPPERS: usize = 23;
    let cluster = start().await?;
    let api = cluster.client();
    let mut expected: Vec<String> = (0..SHOPPERS).map(|n| format!("pager-{n:02}")).collect();
    expected.sort();
    for user in &expected {
        api.insert(user, "pork").await?.expect_status(200);
    }
    let mut listed: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let reply = api
            .list_category_page("1", after.as_deref(), Some("4"))
            .await?;
        reply.expect_status(200);
        let users = reply.users();
        assert!(users.len() <= 4, "a page over its limit: {reply}");
        listed.extend(users);
        pages += 1;
        match reply.json.get("next") {
            Some(Value::String(next)) => after = Some(next.clone()),
            Some(Value::Null) => break,
            other => panic!("no next cursor ({other:?}): {reply}"),
        }
        assert!(pages <= SHOPPERS, "the pages do not end");
    }
    assert_eq!(listed, expected, "each shopper once, in order");
    assert!(pages >= SHOPPERS / 4, "{pages} pages");

    for (limit, field) in [("0", "limit"), ("10001", "limit"), ("many", "limit")] {
        let reply = api.list_category_page("1", None, Some(limit)).await?;
        reply.expect_status(400);
        let error = reply.error().unwrap_or_default();
        assert!(error.contains(field), "limit={limit}: {reply}");
    }
    let reply = api.list_category_page("1", Some("bad\u{1}"), None).await?;
    reply.expect_status(400);
    assert!(
        reply.error().unwrap_or_default().contains("after"),
        "{reply}"
    );
    Ok(())
}

/// With an admin token configured, `list_category` needs `Authorization: Bearer <token>`:
/// without it or with a wrong one the answer is 401 with a JSON error.
#[tokio::test]
async fn list_category_requires_the_admin_token() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    api.insert("gina", "pork").await?.expect_status(200);
    for client in [
        api.with_admin_token(None),
        api.with_admin_token(Some("wrong-token")),
    ] {
        let reply = client.list_category("1").await?;
        reply.expect_status(401);
        assert!(reply.error().is_some_and(|e| !e.is_empty()), "{reply}");
    }
    let reply = api.list_category("1").await?;
    reply.expect_status(200);
    assert_eq!(reply.users(), ["gina"]);
    Ok(())
}

/// `GET /api/products` lists the catalog (the seed's pork, soap, yogurt and cereals
/// included); an admin can add a product with `POST /api/products` (401 without the token),
/// after which it can be put in a cart.
#[tokio::test]
async fn products_are_listed_and_an_added_product_can_be_bought() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    let catalog = api.products().await?;
    catalog.expect_status(200);
    for name in ["pork", "soap", "yogurt", "cereals"] {
        let product = catalog
            .product(name)
            .with_context(|| format!("{name} missing: {catalog}"))?;
        for field in ["productid", "price", "category"] {
            assert!(
                product.get(field).is_some(),
                "{name} lacks {field}: {catalog}"
            );
        }
    }

    let kiwi = json!({"productid": "9001", "name": "kiwi", "category": "4", "price": 7});
    let refused = api.with_admin_token(None).add_product(&kiwi).await?;
    refused.expect_status(401);
    let added = api.add_product(&kiwi).await?;
    assert!(added.is_success(), "adding a product: {added}");
    // The gateway that wrote the catalog knows kiwi at once; the other learns it through its
    // ZooKeeper watch a moment later, and the API server picks a gateway at random.
    wait_until(
        "kiwi to be listed by the gateways",
        Duration::from_secs(15),
        || async {
            let listed = api.products().await?;
            Ok(listed.product("kiwi").is_some().then_some(()))
        },
    )
    .await?;
    let bought = wait_until(
        "the gateways to know kiwi",
        Duration::from_secs(15),
        || async {
            let reply = api.insert("hank", "kiwi").await?;
            Ok((reply.status != 404).then_some(reply))
        },
    )
    .await?;
    bought.expect_status(200);
    assert_eq!(api.list_all("hank").await?.qty_of("kiwi"), 1);
    Ok(())
}

/// Two inserts carrying the same `Idempotency-Key` are one operation (a retried request is
/// applied once); a different key is a new operation.
#[tokio::test]
async fn the_same_idempotency_key_applies_an_insert_once() -> Result<()> {
    let cluster = start().await?;
    let api = cluster.client();
    for _ in 0..2 {
        let reply = api
            .insert_with_key("ivan", "cereals", "retry-key-1")
            .await?;
        reply.expect_status(200);
        assert_eq!(
            reply.qty(),
            Some(1),
            "a retry answers like the first attempt: {reply}"
        );
    }
    assert_eq!(api.list_all("ivan").await?.qty_of("cereals"), 1);
    api.insert_with_key("ivan", "cereals", "retry-key-2")
        .await?
        .expect_status(200);
    assert_eq!(api.list_all("ivan").await?.qty_of("cereals"), 2);
    Ok(())
}

/// `GET /healthz` answers 200 on a healthy cluster.
#[tokio::test]
async fn healthz_answers_ok() -> Result<()> {
    let cluster = start().await?;
    cluster.client().get("/healthz").await?.expect_status(200);
    Ok(())
}
