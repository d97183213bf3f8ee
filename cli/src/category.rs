//! `cartdb category C`: the users holding an item of a category with quantity above 0, from
//! the data tier's category index (`GET /api/list_category`, admin). `--json` prints the
//! API's document.

use clap::Args;
use serde_json::Value;

use crate::api_client::{ApiArgs, get_json, print_document};

/// Arguments of `cartdb category`.
#[derive(Debug, Args)]
pub struct CategoryArgs {
    /// The category.
    #[arg(value_name = "CATEGORY")]
    category: String,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

/// Prints the category's users, one per line.
///
/// # Errors
/// The API unreachable or answering an error.
pub fn run(args: CategoryArgs) -> anyhow::Result<()> {
    let document = get_json(
        &args.api,
        "/api/list_category",
        &[("category", args.category)],
    )?;
    print_document(&document, args.json, user_lines);
    Ok(())
}

fn user_lines(document: &Value) -> String {
    document["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|user| format!("{user}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn one_user_per_line() {
        let document = json!({"category": "1", "users": ["u1", "u2"]});
        assert_eq!(user_lines(&document), "u1\nu2\n");
        assert_eq!(user_lines(&json!({"category": "1", "users": []})), "");
    }
}
