//! An example merge policy of cartdb that is deliberately *not* a safe merge: last writer
//! wins. It returns, whole, the replica state that saw the newest write (the largest
//! version among its operations and its base); on a tie, the first such state in the list.
//!
//! It exists to show what `cartdb policy verify-merge` catches: a replica that saw the
//! newest write may still have missed an older one, so this policy drops acknowledged
//! operations, and with ties its answer depends on the order of the states.
//!
//! # Layout
//! - this module: [`last_writer`], the choice, on plain values.
//! - `guest` (wasm32 only): the wit-bindgen glue exporting the component interface.

#[cfg(target_arch = "wasm32")]
mod guest;

/// The policy name the component reports.
pub const POLICY_NAME: &str = "last-writer-wins";

/// The index of the state whose newest version is the largest, the first one on a tie;
/// `None` for no states. `newest` gives each state's newest version (`None`: it saw no
/// write), in list order.
pub fn last_writer<V: Ord>(newest: impl IntoIterator<Item = Option<V>>) -> Option<usize> {
    let mut best: Option<(usize, Option<V>)> = None;
    for (index, version) in newest.into_iter().enumerate() {
        // Strictly newer only, so the first of equals stays.
        if best.as_ref().is_none_or(|(_, held)| version > *held) {
            best = Some((index, version));
        }
    }
    best.map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_wins_and_the_first_of_equals() {
        assert_eq!(last_writer::<u64>([]), None);
        assert_eq!(last_writer([None, Some(3), Some(7), Some(7)]), Some(2));
        assert_eq!(last_writer::<u64>([None, None]), Some(0));
    }
}
