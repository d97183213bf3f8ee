//! One page of `list_category`, merged from the data nodes' pages (pure).
//!
//! Every data node answers the first `limit` users after the cursor that it holds in the
//! category, with all their items, and says whether more follow. A user beyond one node's
//! last user may still be on a later page of that node, so the merged page ends at the
//! smallest last user among the nodes that had more (the *bound*): up to it, every node's
//! answer is complete. The page is the sorted union of the users whose items were answered
//! by a device of the item's read set, cut to `limit`; its cursor is the page's last user,
//! or the bound when the cut was not needed, or none when no node had more.
//!
//! Each user is thereby listed on exactly one page: pages are disjoint ranges of user
//! names, and every range is complete.

use std::collections::{BTreeMap, BTreeSet};

use cartdb_core::cart::{DeviceId, ItemKey};

use crate::pg_stream::window_end;

/// One device's answer: its items in the page (sorted by user) and whether more follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicePage {
    pub items: Vec<ItemKey>,
    pub more: bool,
}

/// A merged page: the users, sorted and distinct, and the cursor of the next page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategoryPage {
    pub users: Vec<String>,
    pub next: Option<String>,
}

impl CategoryPage {
    /// Merges the devices' `answers` into a page of at most `limit` users, counting an item
    /// only where `believed(item, device)` (the device is in the item's read set).
    pub fn merge(
        answers: &BTreeMap<DeviceId, DevicePage>,
        limit: usize,
        believed: impl Fn(&ItemKey, DeviceId) -> bool,
    ) -> Self {
        let bound = window_end(
            answers
                .values()
                .map(|page| (page.items.last().map(|item| item.user.as_str()), page.more)),
        );
        let users: BTreeSet<&str> = answers
            .iter()
            .flat_map(|(device, page)| page.items.iter().map(move |item| (*device, item)))
            .filter(|(_, item)| bound.is_none_or(|bound| item.user.as_str() <= bound))
            .filter(|(device, item)| believed(item, *device))
            .map(|(_, item)| item.user.as_str())
            .collect();
        let limit = limit.max(1);
        if users.len() > limit {
            let users: Vec<String> = users.into_iter().take(limit).map(str::to_owned).collect();
            let next = users.last().cloned();
            return Self { users, next };
        }
        Self {
            users: users.into_iter().map(str::to_owned).collect(),
            next: bound.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(user: &str) -> ItemKey {
        ItemKey {
            user: user.into(),
            product: "p".into(),
        }
    }

    fn page(users: &[&str], more: bool) -> DevicePage {
        DevicePage {
            items: users.iter().map(|u| item(u)).collect(),
            more,
        }
    }

    fn believe_all(_: &ItemKey, _: DeviceId) -> bool {
        true
    }

    #[test]
    fn the_page_ends_where_every_answer_is_complete() {
        let answers = BTreeMap::from([
            (1, page(&["a", "c", "e"], true)),
            (2, page(&["b", "d"], true)),
            (3, page(&["a", "f"], false)),
        ]);
        let merged = CategoryPage::merge(&answers, 3, believe_all);
        // Device 2 may hold users after "d" that come before "e" or "f".
        assert_eq!(merged.users, ["a", "b", "c"]);
        assert_eq!(merged.next.as_deref(), Some("c"));
        let wide = CategoryPage::merge(&answers, 10, believe_all);
        assert_eq!(wide.users, ["a", "b", "c", "d"]);
        assert_eq!(wide.next.as_deref(), Some("d"));
    }

    #[test]
    fn the_last_page_has_no_cursor_and_untrusted_copies_do_not_count() {
        let answers = BTreeMap::from([(1, page(&["a", "b"], false)), (2, page(&["z"], false))]);
        let merged = CategoryPage::merge(&answers, 10, |_, device| device == 1);
        assert_eq!(merged.users, ["a", "b"]);
        assert_eq!(merged.next, None);
        assert_eq!(
            CategoryPage::merge(&BTreeMap::new(), 5, believe_all),
            CategoryPage::default()
        );
    }

    /// Paging through the devices' full lists with every limit lists every user once.
    #[test]
    fn pages_list_every_user_exactly_once() {
        let held: BTreeMap<DeviceId, Vec<String>> = (1..=3)
            .map(|device| {
                let users = (0..40)
                    .filter(|n| n % (device + 1) != 0)
                    .map(|n| format!("u{n:02}"))
                    .collect();
                (device, users)
            })
            .collect();
        let all: BTreeSet<&String> = held.values().flatten().collect();
        for limit in 1..=7 {
            let mut listed = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let answers = held
                    .iter()
                    .map(|(device, users)| {
                        let rest: Vec<&String> = users
                            .iter()
                            .filter(|u| after.as_ref().is_none_or(|a| *u > a))
                            .collect();
                        let shown: Vec<&str> =
                            rest.iter().take(limit).map(|u| u.as_str()).collect();
                        (*device, page(&shown, rest.len() > limit))
                    })
                    .collect();
                let merged = CategoryPage::merge(&answers, limit, believe_all);
                listed.extend(merged.users);
                match merged.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let expected: Vec<&String> = all.iter().copied().collect();
            let listed_refs: Vec<&String> = listed.iter().collect();
            assert_eq!(listed_refs, expected, "limit {limit}");
        }
    }
}
