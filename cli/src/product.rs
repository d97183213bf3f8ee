//! `cartdb product list` and `cartdb product set`: the catalog (`GET /api/products`), and
//! adding or replacing a product (`POST /api/products`, admin). `--json` prints the API's
//! document.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::api_client::{ApiArgs, get_json, post_json, print_document};

/// `cartdb product ...`.
#[derive(Debug, Subcommand)]
pub enum ProductCommand {
    /// List the catalog: product id, name, category and price.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Add a product, or replace the one with the same id (admin).
    Set(SetArgs),
}

/// Arguments of `cartdb product set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The product id (1-256 bytes, no `/`, not starting with `@`).
    #[arg(long)]
    productid: String,
    /// The name shoppers add it to carts by.
    #[arg(long)]
    name: String,
    #[arg(long)]
    category: String,
    /// The price, a whole number.
    #[arg(long)]
    price: u64,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Runs a `product` subcommand.
///
/// # Errors
/// The API unreachable or answering an error (a refused field: 400 naming it).
pub fn run(command: ProductCommand) -> anyhow::Result<()> {
    match command {
        ProductCommand::List { api, json } => {
            let document = get_json(&api, "/api/products", &[])?;
            print_document(&document, json, product_lines);
        }
        ProductCommand::Set(args) => {
            let product = json!({
                "productid": args.productid,
                "name": args.name,
                "category": args.category,
                "price": args.price,
            });
            let answer = post_json(&args.api, "/api/products", &product)?;
            print_document(&answer, args.json, |answer| {
                format!("set {}\n", product_line(answer))
            });
        }
    }
    Ok(())
}

fn product_line(product: &Value) -> String {
    format!(
        "{} {} category {} price {}",
        product["productid"].as_str().unwrap_or("?"),
        product["name"].as_str().unwrap_or("?"),
        product["category"].as_str().unwrap_or("?"),
        product["price"]
    )
}

fn product_lines(document: &Value) -> String {
    document["products"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|product| product_line(product) + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_product_per_line() {
        let document = json!({"products": [
            {"productid": "1", "name": "pork", "category": "1", "price": 61},
        ]});
        assert_eq!(product_lines(&document), "1 pork category 1 price 61\n");
    }
}
