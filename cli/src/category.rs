//! `cartdb category C`: the users holding an item of a category with quantity above 0, from
//! the data tier's category index (`GET /api/list_category`, admin), fetched a page at a
//! time and printed as each page arrives. `--json` prints one document with every user.

use clap::Args;
use serde_json::{Value, json};

use crate::api_client::{ApiArgs, get_json, print_document};

/// Arguments of `cartdb category`.
#[derive(Debug, Args)]
pub struct CategoryArgs {
    /// The category.
    #[arg(value_name = "CATEGORY")]
    category: String,
    /// Users per request to the API, 1 to 10000.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page: u32,
    #[command(flatten)]
    api: ApiArgs,
    /// Print one JSON document, `{"category": C, "users": [..]}`, with every user.
    #[arg(long)]
    json: bool,
}

/// Prints the category's users, one per line, following the pages to the last.
///
/// # Errors
/// The API unreachable or answering an error, or a page whose cursor does not advance.
pub fn run(args: CategoryArgs) -> anyhow::Result<()> {
    let mut users = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![
            ("category", args.category.clone()),
            ("limit", args.page.to_string()),
        ];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let page = get_json(&args.api, "/api/list_category", &query)?;
        if args.json {
            users.extend(page_users(&page).map(str::to_owned));
        } else {
            print_document(&page, false, user_lines);
        }
        match page["next"].as_str() {
            Some(next) if after.as_deref().is_none_or(|a| next > a) => {
                after = Some(next.to_owned());
            }
            Some(next) => anyhow::bail!(
                "the API answered a page whose cursor {next:?} does not advance past {after:?}"
            ),
            None => break,
        }
    }
    if args.json {
        print_document(
            &json!({"category": args.category, "users": users}),
            true,
            user_lines,
        );
    }
    Ok(())
}

fn page_users(document: &Value) -> impl Iterator<Item = &str> {
    document["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn user_lines(document: &Value) -> String {
    page_users(document)
        .map(|user| format!("{user}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn one_user_per_line() {
        let document = json!({"category": "1", "users": ["u1", "u2"], "next": null});
        assert_eq!(user_lines(&document), "u1\nu2\n");
        assert_eq!(user_lines(&json!({"category": "1", "users": []})), "");
    }
}
