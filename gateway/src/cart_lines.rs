//! Turning merged item summaries into the cart a shopper sees. Pure.

use cartdb_core::cart::{CartLine, ItemSummary};
use cartdb_core::placement_key::is_index_entry;

/// The cart lines of merged item summaries: only items with a quantity above zero (never
/// the cart-index entries a cart read also returns), named by
/// `name_of(productid)` (the stored product id when the catalog no longer has the product),
/// sorted by name and then product id. Price and category are the ones stored with the item.
pub fn cart_lines<'a>(
    merged: &[ItemSummary],
    name_of: impl Fn(&str) -> Option<&'a str>,
) -> Vec<CartLine> {
    let mut lines: Vec<CartLine> = merged
        .iter()
        .filter(|item| !is_index_entry(&item.product))
        .filter_map(|item| {
            let qty = item.qty;
            (qty > 0).then(|| CartLine {
                name: name_of(&item.product).unwrap_or(&item.product).to_owned(),
                productid: item.product.clone(),
                price: item.meta.price,
                category: item.meta.category.clone(),
                qty,
            })
        })
        .collect();
    lines.sort_by(|a, b| (&a.name, &a.productid).cmp(&(&b.name, &b.productid)));
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, ItemState, OpId, OpKind, Operation};
    use cartdb_core::version::Version;

    use super::*;

    fn item(product: &str, kinds: &[OpKind]) -> ItemState {
        let mut s = ItemState::new(
            product,
            ItemMeta {
                price: 28,
                category: "2".into(),
            },
        );
        for (i, kind) in kinds.iter().enumerate() {
            s.apply(Operation {
                id: OpId(i as u128),
                kind: *kind,
                version: Version {
                    hlc: i as u64 + 1,
                    gateway: 1,
                },
            });
        }
        s
    }

    fn names(id: &str) -> Option<&'static str> {
        match id {
            "1" => Some("yogurt"),
            "2" => Some("cereals"),
            _ => None,
        }
    }

    #[test]
    fn lines_are_named_sorted_and_only_positive() {
        let merged = [
            item("1", &[OpKind::Add]),
            item("2", &[OpKind::Add, OpKind::Add]),
            item("3", &[OpKind::Add, OpKind::Delete]),
            item("9", &[OpKind::Add]),
            // A cart-index entry is not a cart line.
            item("@1", &[OpKind::Add]),
        ]
        .map(|state| state.summary());
        let lines = cart_lines(&merged, names);
        let summary: Vec<(&str, &str, u64)> = lines
            .iter()
            .map(|l| (l.name.as_str(), l.productid.as_str(), l.qty))
            .collect();
        // "9" is not in the catalog: it keeps its product id as its name.
        assert_eq!(
            summary,
            [("9", "9", 1), ("cereals", "2", 2), ("yogurt", "1", 1)]
        );
        assert_eq!(lines[1].price, 28);
        assert_eq!(lines[1].category, "2");
    }

    #[test]
    fn an_empty_cart_has_no_lines() {
        assert!(cart_lines(&[], names).is_empty());
    }
}
