//! A thin client for cartdb's REST API that returns what the server said as a [`Reply`]:
//! the HTTP status and the JSON body. A 4xx or 5xx is a `Reply`, not an error; only a failure
//! to talk to the server at all (refused, reset, no answer within the request timeout) is an
//! `Err`, so suites can assert on error statuses and messages.

use std::time::Duration;

use anyhow::Context;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

/// The longest a single request may take before the client gives up. A guard against hangs
/// only; no suite asserts on speed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What the API answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body parsed as JSON, or `Value::Null` if it was not JSON.
    pub json: Value,
    /// The raw body.
    pub text: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
}

impl Reply {
    /// The `"error"` string of an error body.
    pub fn error(&self) -> Option<&str> {
        self.json.get("error").and_then(Value::as_str)
    }

    /// The `"qty"` number of an insert or delete answer.
    pub fn qty(&self) -> Option<u64> {
        self.json.get("qty").and_then(Value::as_u64)
    }

    /// The `"message"` string of an insert or delete answer.
    pub fn message(&self) -> Option<&str> {
        self.json.get("message").and_then(Value::as_str)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The items of a `list_all` answer (`"response"`), or an empty slice.
    pub fn items(&self) -> &[Value] {
        self.json
            .get("response")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// `(name, qty)` of every item of a `list_all` answer, in the order given.
    pub fn item_quantities(&self) -> Vec<(String, u64)> {
        self.items()
            .iter()
            .map(|item| {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (name, item.get("qty").and_then(Value::as_u64).unwrap_or(0))
            })
            .collect()
    }

    /// The quantity of the item named `name` in a `list_all` answer (0 if absent).
    pub fn qty_of(&self, name: &str) -> u64 {
        self.item_quantities()
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, qty)| qty)
    }

    /// The `"users"` of a `list_category` answer.
    pub fn users(&self) -> Vec<String> {
        self.json
            .get("users")
            .and_then(Value::as_array)
            .map(|users| {
                users
                    .iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The products of a `GET /api/products` answer: a bare array or `{"products": [..]}`.
    pub fn products(&self) -> &[Value] {
        match &self.json {
            Value::Array(products) => products,
            other => other
                .get("products")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice),
        }
    }

    /// The product named `name` in a `GET /api/products` answer.
    pub fn product(&self, name: &str) -> Option<&Value> {
        self.products()
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    }

    /// Panics with the whole reply unless the status is `status`; returns the reply for chaining.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status; reply: {self}");
        self
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

/// A REST client bound to one API server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    admin_token: Option<String>,
}

impl ApiClient {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:8080`). `admin_token`, if any,
    /// is sent as a bearer token on the admin endpoints (`list_category`, adding products).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: impl Into<String>, admin_token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.into(),
            http,
            admin_token,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client with another (or no) admin token.
    #[must_use]
    pub fn with_admin_token(&self, token: Option<&str>) -> Self {
        Self {
            admin_token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// `POST /api/insert {"userid", "item_name"}`.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn insert(&self, user: &str, item: &str) -> anyhow::Result<Reply> {
        self.post_json("/api/insert", &json!({"userid": user, "item_name": item}))
            .await
    }

    /// `POST /api/insert` with an `Idempotency-Key` header.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn insert_with_key(
        &self,
        user: &str,
        item: &str,
        key: &str,
    ) -> anyhow::Result<Reply> {
        self.change_with_key("/api/insert", user, item, key).await
    }

    /// `POST /api/delete` with an `Idempotency-Key` header.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn delete_with_key(
        &self,
        user: &str,
        item: &str,
        key: &str,
    ) -> anyhow::Result<Reply> {
        self.change_with_key("/api/delete", user, item, key).await
    }

    async fn change_with_key(
        &self,
        path: &str,
        user: &str,
        item: &str,
        key: &str,
    ) -> anyhow::Result<Reply> {
        let request = self
            .http
            .post(self.url(path))
            .header("Idempotency-Key", key)
            .json(&json!({"userid": user, "item_name": item}));
        send(request).await
    }

    /// `POST /api/delete {"userid", "item_name"}`.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn delete(&self, user: &str, item: &str) -> anyhow::Result<Reply> {
        self.post_json("/api/delete", &json!({"userid": user, "item_name": item}))
            .await
    }

    /// `GET /api/list_all?userid=..`.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn list_all(&self, user: &str) -> anyhow::Result<Reply> {
        send(
            self.http
                .get(self.url("/api/list_all"))
                .query(&[("userid", user)]),
        )
        .await
    }

    /// `GET /api/list_category?category=..`, with the admin token if the client has one.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn list_category(&self, category: &str) -> anyhow::Result<Reply> {
        self.list_category_page(category, None, None).await
    }

    /// One page of `list_category`: the users after `after`, at most `limit` (the server's
    /// default when `None`).
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn list_category_page(
        &self,
        category: &str,
        after: Option<&str>,
        limit: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut query = vec![("category", category)];
        query.extend(after.map(|after| ("after", after)));
        query.extend(limit.map(|limit| ("limit", limit)));
        let request = self.http.get(self.url("/api/list_category")).query(&query);
        send(self.authorised(request)).await
    }

    /// `GET /api/admin/replicas?userid=..`, with the admin token if the client has one.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn replicas(&self, user: &str) -> anyhow::Result<Reply> {
        let request = self
            .http
            .get(self.url("/api/admin/replicas"))
            .query(&[("userid", user)]);
        send(self.authorised(request)).await
    }

    /// `GET /api/products`.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn products(&self) -> anyhow::Result<Reply> {
        self.get("/api/products").await
    }

    /// `POST /api/products` with `product` as the body, with the admin token if any.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn add_product(&self, product: &Value) -> anyhow::Result<Reply> {
        send(self.authorised(self.http.post(self.url("/api/products")).json(product))).await
    }

    /// `GET /api/cluster`.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn cluster(&self) -> anyhow::Result<Reply> {
        self.get("/api/cluster").await
    }

    /// `GET path`, with the admin token if the client has one.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        send(self.authorised(self.http.get(self.url(path)))).await
    }

    /// `POST path` with a JSON body, with the admin token if the client has one.
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        send(self.authorised(self.http.post(self.url(path)).json(body))).await
    }

    /// Any request with raw bytes as the body and an optional content type (for bad input).
    ///
    /// # Errors
    /// Only when the server cannot be reached.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.http.request(method, self.url(path)).body(body.into());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        send(self.authorised(request)).await
    }

    fn authorised(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn send(request: RequestBuilder) -> anyhow::Result<Reply> {
    let response = request
        .send()
        .await
        .context("sending the request to the API")?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.context("reading the API's answer")?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        json,
        text,
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(json: Value) -> Reply {
        Reply {
            status: 200,
            text: json.to_string(),
            json,
            content_type: None,
        }
    }

    #[test]
    fn list_all_quantities_are_read_by_name() {
        let reply = reply(json!({"userid": "u", "response": [
            {"name": "cereals", "qty": 2}, {"name": "pork", "qty": 1}
        ]}));
        assert_eq!(reply.qty_of("pork"), 1);
        assert_eq!(reply.qty_of("soap"), 0);
        assert_eq!(reply.item_quantities()[0], ("cereals".to_owned(), 2));
    }

    #[test]
    fn error_and_users_accessors() {
        assert_eq!(reply(json!({"error": "nope"})).error(), Some("nope"));
        assert_eq!(reply(json!({"users": ["a", "b"]})).users(), ["a", "b"]);
        assert!(reply(json!({})).users().is_empty());
    }
}
