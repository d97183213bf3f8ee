//! The CRUSH mapper: straw2 choice, `firstn` and `indep` selection, and the rule
//! interpreter (`crush_do_rule`), integer-only and bit-compatible with libcrush.
//!
//! ```text
//! Placer::place(x, n) -> do_rule: for each step
//!   take   -> working set = [item]
//!   choose -> for each bucket in the working set: firstn | indep
//!               descend with straw2 until an item of the wanted type, retry on
//!               collision / out device / (leaf mode) no leaf below, up to `tries`
//!   emit   -> result += working set
//! ```
//! Retry counters follow libcrush exactly (including the off-by-one of
//! `choose_total_tries`), since any difference changes placements.

use crate::error::MapError;
use crate::ln::crush_ln;
use crate::map::{Bucket, Child, CrushMap, Target, WEIGHT_ONE};
use crate::rule::{Setting, Step};
use cartdb_model::rjenkins::{hash2, hash3};

/// libcrush's "no item here" marker, left in `indep` results for positions it could not fill.
pub const ITEM_NONE: i32 = 0x7fff_ffff;
/// libcrush's "not decided yet" marker inside `indep`.
const ITEM_UNDEF: i32 = 0x7fff_fffe;
/// Scratch entries for the markers: no target, so a later step skips them like libcrush.
const NONE: Child = Child {
    id: ITEM_NONE,
    weight: 0,
    target: Target::Device(usize::MAX),
};
const UNDEF: Child = Child {
    id: ITEM_UNDEF,
    weight: 0,
    target: Target::Device(usize::MAX),
};
/// Upper bound on the replicas of one call: bounds the scratch space a caller can demand.
pub const MAX_REPLICAS: u32 = 1024;

/// A map, one of its rules and the device reweights: everything `place` needs.
#[derive(Debug, Clone)]
pub struct Placer {
    map: CrushMap,
    rule: usize,
    /// 16.16 "in" weight per device, by dense device index.
    reweights: Vec<u32>,
}

impl Placer {
    /// Selects `rule` (or the only rule) and applies `reweights` (`(device, 16.16 weight)`;
    /// devices not listed are fully in, later entries win, devices the map lacks are ignored
    /// so that a stale reweight of a removed device is harmless).
    ///
    /// # Errors
    /// [`MapError::RuleNotFound`], [`MapError::AmbiguousRule`], or
    /// [`MapError::ReweightNotDevice`] for a negative id.
    pub fn new(
        map: CrushMap,
        rule: Option<&str>,
        reweights: &[(i32, u32)],
    ) -> Result<Self, MapError> {
        let rule = map.rule_index(rule)?;
        let mut weights = vec![WEIGHT_ONE; map.devices.len()];
        for &(device, weight) in reweights {
            if device < 0 {
                return Err(MapError::ReweightNotDevice { device });
            }
            if let Some(&index) = map.device_by_id.get(&device) {
                weights[index] = weight;
            }
        }
        Ok(Self {
            map,
            rule,
            reweights: weights,
        })
    }

    /// The map this placer uses.
    #[must_use]
    pub fn map(&self) -> &CrushMap {
        &self.map
    }

    /// Devices for `x`, primary first, at most `replicas` (capped at [`MAX_REPLICAS`]);
    /// positions `indep` could not fill are left out.
    #[must_use]
    pub fn place(&self, x: u32, replicas: u32) -> Vec<i32> {
        let mut result = self.do_rule(x, replicas);
        result.retain(|&id| id != ITEM_NONE);
        result
    }

    /// Runs the rule for `x` like `crush_do_rule` with `result_max = replicas` (capped at
    /// [`MAX_REPLICAS`]); `indep` holes are kept as [`ITEM_NONE`].
    #[must_use]
    pub fn do_rule(&self, x: u32, replicas: u32) -> Vec<i32> {
        let result_max = replicas.min(MAX_REPLICAS) as usize;
        let ctx = Ctx {
            map: &self.map,
            reweights: &self.reweights,
            x,
        };
        let mut run = RuleRun::new(&self.map, result_max);
        for step in &self.map.rules[self.rule].steps {
            run.step(&ctx, step);
        }
        run.result
    }
}

/// Current values of the step-overridable tunables.
#[derive(Debug, Clone, Copy)]
struct Params {
    choose_tries: u32,
    choose_leaf_tries: u32,
    local_retries: u32,
    descend_once: bool,
    vary_r: u32,
    stable: bool,
}

/// State of one `crush_do_rule` run: the working set and two scratch vectors, carved from
/// one allocation. Entries carry their target, so no id lookup is needed between steps.
struct RuleRun {
    params: Params,
    result_max: usize,
    result: Vec<i32>,
    /// `[w | o | c]`, each `width` long: the working set, the chosen items, their leaves.
    scratch: Vec<Child>,
    width: usize,
    /// Length of the working set `w`.
    wsize: usize,
}

impl RuleRun {
    fn new(map: &CrushMap, result_max: usize) -> Self {
        let t = map.tunables;
        let params = Params {
            choose_tries: t.choose_total_tries + 1,
            choose_leaf_tries: 0,
            local_retries: t.choose_local_tries,
            descend_once: t.chooseleaf_descend_once,
            vary_r: t.chooseleaf_vary_r,
            stable: t.chooseleaf_stable,
        };
        // `take` needs one slot even when no replica is asked for.
        let width = result_max.max(1);
        Self {
            params,
            result_max,
            result: Vec::with_capacity(result_max),
            scratch: vec![NONE; 3 * width],
            width,
            wsize: 0,
        }
    }

    fn step(&mut self, ctx: &Ctx<'_>, step: &Step) {
        match *step {
            Step::Take(item) => {
                self.scratch[0] = item;
                self.wsize = 1;
            }
            Step::Choose {
                leaf,
                firstn,
                n,
                type_id,
            } => self.choose(ctx, leaf, firstn, n, type_id),
            Step::Emit => {
                let room = self.result_max - self.result.len();
                self.result
                    .extend(self.scratch[..self.wsize].iter().take(room).map(|c| c.id));
                self.wsize = 0;
            }
            Step::Set(setting, Some(v)) => self.set(setting, v),
            Step::Set(_, None) => {}
        }
    }

    fn set(&mut self, setting: Setting, v: u32) {
        let p = &mut self.params;
        match setting {
            Setting::ChooseTries => p.choose_tries = v,
            Setting::ChooseleafTries => p.choose_leaf_tries = v,
            Setting::ChooseLocalTries => p.local_retries = v,
            Setting::ChooseleafVaryR => p.vary_r = v,
            Setting::ChooseleafStable => p.stable = v != 0,
        }
    }

    /// One choose/chooseleaf step over every bucket of the working set.
    fn choose(&mut self, ctx: &Ctx<'_>, leaf: bool, firstn: bool, n: i32, want_type: u32) {
        if self.wsize == 0 {
            return;
        }
        let p = self.params;
        let (work, rest) = self.scratch.split_at_mut(self.width);
        let (out, leaves) = rest.split_at_mut(self.width);
        let mut osize = 0;
        for item in &work[..self.wsize] {
            let numrep = i64::from(n) + if n <= 0 { self.result_max as i64 } else { 0 };
            let (Ok(numrep), Target::Bucket(bucket)) = (usize::try_from(numrep), item.target)
            else {
                continue;
            };
            if numrep == 0 {
                continue;
            }
            let out = &mut out[osize..];
            let leaves = leaf.then_some(&mut leaves[osize..]);
            if firstn {
                let recurse_tries = match p.choose_leaf_tries {
                    0 if p.descend_once => 1,
                    0 => p.choose_tries,
                    t => t,
                };
                let job = Job::new(&p, bucket, numrep, want_type, p.choose_tries, recurse_tries);
                osize += ctx.firstn(&job, out, leaves, 0, self.result_max - osize);
            } else {
                let recurse_tries = if p.choose_leaf_tries > 0 {
                    p.choose_leaf_tries
                } else {
                    1
                };
                let job = Job::new(&p, bucket, numrep, want_type, p.choose_tries, recurse_tries);
                let left = numrep.min(self.result_max - osize);
                ctx.indep(&job, out, leaves, 0, left);
                osize += left;
            }
        }
        let chosen = if leaf {
            &leaves[..osize]
        } else {
            &out[..osize]
        };
        work[..osize].copy_from_slice(chosen);
        self.wsize = osize;
    }
}

/// Parameters of one firstn/indep selection (one bucket of the working set, or a leaf descent).
#[derive(Debug, Clone, Copy)]
struct Job {
    bucket: usize,
    numrep: usize,
    want_type: u32,
    tries: u32,
    recurse_tries: u32,
    parent_r: u32,
    local_retries: u32,
    vary_r: u32,
    stable: bool,
}

impl Job {
    fn new(
        p: &Params,
        bucket: usize,
        numrep: usize,
        want_type: u32,
        tries: u32,
        recurse_tries: u32,
    ) -> Self {
        Self {
            bucket,
            numrep,
            want_type,
            tries,
            recurse_tries,
            parent_r: 0,
            local_retries: p.local_retries,
            vary_r: p.vary_r,
            stable: p.stable,
        }
    }

    /// The single-device descent below a bucket chosen by `chooseleaf`.
    fn leaf(&self, bucket: usize, numrep: usize, parent_r: u32) -> Self {
        Self {
            bucket,
            numrep,
            want_type: 0,
            tries: self.recurse_tries,
            recurse_tries: 0,
            parent_r,
            ..*self
        }
    }
}

/// The inputs that are fixed during one mapping.
struct Ctx<'a> {
    map: &'a CrushMap,
    reweights: &'a [u32],
    x: u32,
}

impl Ctx<'_> {
    /// straw2: the child with the highest draw `(ln(hash & 0xffff) - 2^48) / weight`; the
    /// first one wins ties, a zero weight draws `i64::MIN`. `None` for an empty bucket.
    ///
    /// The draw is never positive, so it is computed as the quotient `(2^48 - ln) / weight`
    /// (equal magnitude, truncation toward zero alike) and the *smallest* quotient wins;
    /// unsigned division is cheaper than signed, and a lone child wins without any hashing,
    /// exactly as in libcrush where the first child is the default.
    #[inline]
    fn straw2<'b>(&self, bucket: &'b Bucket, r: u32) -> Option<&'b Child> {
        if let [only] = bucket.children.as_slice() {
            return Some(only);
        }
        let mut best: Option<(&Child, u64)> = None;
        for child in &bucket.children {
            let quotient = if child.weight == 0 {
                u64::MAX
            } else {
                let u = hash3(self.x, child.id as u32, r) & 0xffff;
                (0x1_0000_0000_0000 - crush_ln(u)) / u64::from(child.weight)
            };
            if best.is_none_or(|(_, low)| quotient < low) {
                best = Some((child, quotient));
            }
        }
        best.map(|(child, _)| child)
    }

    /// Ceph's `is_out`: reweight 0 is out, >= 1.0 in, in between in for that fraction of `x`.
    #[inline]
    fn is_out(&self, device: usize, id: i32) -> bool {
        let w = self.reweights.get(device).copied().unwrap_or(0);
        if w >= WEIGHT_ONE {
            false
        } else if w == 0 {
            true
        } else {
            (hash2(self.x, id as u32) & 0xffff) >= w
        }
    }

    /// `crush_choose_firstn`: fills `out[outpos..]` (and `leaves`, in leaf mode) with up to
    /// `count` items; returns the new `outpos`.
    fn firstn(
        &self,
        job: &Job,
        out: &mut [Child],
        mut leaves: Option<&mut [Child]>,
        mut outpos: usize,
        mut count: usize,
    ) -> usize {
        let mut rep = if job.stable { 0 } else { outpos };
        while rep < job.numrep && count > 0 {
            if let Some(item) = self.firstn_rep(job, rep, out, leaves.as_deref_mut(), outpos, count)
            {
                out[outpos] = item;
                outpos += 1;
                count -= 1;
            }
            rep += 1;
        }
        outpos
    }

    /// One replica of firstn: the accepted item, or `None` when the tries ran out.
    fn firstn_rep(
        &self,
        job: &Job,
        rep: usize,
        out: &[Child],
        mut leaves: Option<&mut [Child]>,
        outpos: usize,
        count: usize,
    ) -> Option<Child> {
        let mut ftotal: u32 = 0;
        loop {
            // A fresh descent from the job's bucket.
            let mut bucket = job.bucket;
            let mut flocal: u32 = 0;
            loop {
                let r = (rep as u32).wrapping_add(job.parent_r).wrapping_add(ftotal);
                let collide = match self.straw2(&self.map.buckets[bucket], r) {
                    None => false, // an empty bucket: rejected, not a collision
                    Some(&child) => {
                        let item_type = self.map.type_of(child.target);
                        if item_type != job.want_type {
                            match child.target {
                                Target::Bucket(inner) => {
                                    bucket = inner;
                                    continue;
                                }
                                Target::Device(_) => return None,
                            }
                        }
                        let collide = out[..outpos].iter().any(|c| c.id == child.id);
                        let mut reject = false;
                        if !collide && let Some(leaves) = leaves.as_deref_mut() {
                            reject = !self.firstn_leaf(job, &child, r, leaves, outpos, count);
                        }
                        if !reject
                            && !collide
                            && let Target::Device(device) = child.target
                        {
                            reject = self.is_out(device, child.id);
                        }
                        if !reject && !collide {
                            return Some(child);
                        }
                        collide
                    }
                };
                // Rejected or collided: count the failure and retry.
                ftotal += 1;
                flocal += 1;
                if collide && flocal <= job.local_retries {
                    continue; // retry the same bucket
                }
                if ftotal < job.tries {
                    break; // retry the descent from the top
                }
                return None;
            }
        }
    }

    /// chooseleaf: finds one device below `child` into `leaves[outpos]`; false if none.
    fn firstn_leaf(
        &self,
        job: &Job,
        child: &Child,
        r: u32,
        leaves: &mut [Child],
        outpos: usize,
        count: usize,
    ) -> bool {
        match child.target {
            Target::Bucket(inner) => {
                let sub_r = if job.vary_r > 0 {
                    r.checked_shr(job.vary_r - 1).unwrap_or(0)
                } else {
                    0
                };
                let numrep = if job.stable { 1 } else { outpos + 1 };
                let sub = job.leaf(inner, numrep, sub_r);
                self.firstn(&sub, leaves, None, outpos, count) > outpos
            }
            Target::Device(_) => {
                leaves[outpos] = *child;
                true
            }
        }
    }

    /// `crush_choose_indep`: fills positions `outpos..outpos + left` of `out` (and `leaves`),
    /// each position independently, leaving [`ITEM_NONE`] where nothing fits.
    fn indep(
        &self,
        job: &Job,
        out: &mut [Child],
        mut leaves: Option<&mut [Child]>,
        outpos: usize,
        left: usize,
    ) {
        let end = outpos + left;
        out[outpos..end].fill(UNDEF);
        if let Some(leaves) = leaves.as_deref_mut() {
            leaves[outpos..end].fill(UNDEF);
        }
        let mut left = left;
        let mut ftotal: u32 = 0;
        while left > 0 && ftotal < job.tries {
            for rep in outpos..end {
                if out[rep].id == ITEM_UNDEF
                    && self.indep_rep(job, rep, ftotal, out, leaves.as_deref_mut(), outpos..end)
                {
                    left -= 1;
                }
            }
            ftotal += 1;
        }
        for slot in &mut out[outpos..end] {
            if slot.id == ITEM_UNDEF {
                *slot = NONE;
            }
        }
        if let Some(leaves) = leaves {
            for slot in &mut leaves[outpos..end] {
                if slot.id == ITEM_UNDEF {
                    *slot = NONE;
                }
            }
        }
    }

    /// One attempt at position `rep`; true when the position got decided (item or hole).
    fn indep_rep(
        &self,
        job: &Job,
        rep: usize,
        ftotal: u32,
        out: &mut [Child],
        mut leaves: Option<&mut [Child]>,
        span: std::ops::Range<usize>,
    ) -> bool {
        let mut bucket = job.bucket;
        let stride = (job.numrep as u32).wrapping_mul(ftotal);
        let r = (rep as u32).wrapping_add(job.parent_r).wrapping_add(stride);
        loop {
            let Some(&child) = self.straw2(&self.map.buckets[bucket], r) else {
                return false;
            };
            let item_type = self.map.type_of(child.target);
            if item_type != job.want_type {
                match child.target {
                    Target::Bucket(inner) => {
                        bucket = inner;
                        continue;
                    }
                    Target::Device(_) => {
                        out[rep] = NONE;
                        if let Some(leaves) = leaves {
                            leaves[rep] = NONE;
                        }
                        return true;
                    }
                }
            }
            if out[span].iter().any(|c| c.id == child.id) {
                return false;
            }
            if let Some(leaves) = leaves.as_deref_mut() {
                match child.target {
                    Target::Bucket(inner) => {
                        let sub = job.leaf(inner, job.numrep, r);
                        self.indep(&sub, leaves, None, rep, 1);
                        if leaves[rep].id == ITEM_NONE {
                            return false;
                        }
                    }
                    Target::Device(_) => leaves[rep] = child,
                }
            }
            if let Target::Device(device) = child.target
                && item_type == 0
                && self.is_out(device, child.id)
            {
                return false;
            }
            out[rep] = child;
            return true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SEED_MAP: &str = include_str!("../../../../shared/crush/seed-map.json");

    fn placer(text: &str, reweights: &[(i32, u32)]) -> Placer {
        Placer::new(CrushMap::from_json(text).unwrap(), None, reweights).unwrap()
    }

    #[test]
    fn straw2_spot_check_from_the_notes() {
        let text = r#"{"trees": [{"type": "host", "name": "h", "id": -1, "children": [
            {"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"},
            {"id": 3, "name": "d"}]}], "rules": {}}"#;
        let map = CrushMap::from_json(text).unwrap();
        let ctx = Ctx {
            map: &map,
            reweights: &[],
            x: 1234,
        };
        assert_eq!(ctx.straw2(&map.buckets[0], 0).map(|c| c.id), Some(1));
    }

    #[test]
    fn seed_spot_vectors() {
        let p = placer(SEED_MAP, &[]);
        assert_eq!(p.place(72_916_709, 2), vec![1, 3]);
        assert_eq!(p.place(72_916_709, 3), vec![1, 3, 6]);
        assert!(p.place(72_916_709, 0).is_empty());
    }

    #[test]
    fn out_devices_are_never_chosen_and_others_stay() {
        let all = placer(SEED_MAP, &[]);
        let without_3 = placer(SEED_MAP, &[(3, 0)]);
        for x in 0..2000 {
            let before = all.place(x, 3);
            let after = without_3.place(x, 3);
            assert!(!after.contains(&3));
            assert_eq!(after.len(), 3);
            if !before.contains(&3) {
                assert_eq!(before, after, "x={x}: only inputs on the out device move");
            }
        }
    }

    #[test]
    fn indep_keeps_positions_and_marks_holes() {
        let text = SEED_MAP.replace("\"firstn\"", "\"indep\"");
        let p = placer(&text, &[]);
        let r = p.do_rule(72_916_709, 3);
        assert_eq!(r.len(), 3);
        let mut sorted = r.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "distinct devices: {r:?}");
        // More replicas than hosts: the positions that cannot be filled are holes.
        let r = p.do_rule(72_916_709, 8);
        assert_eq!(r.len(), 8);
        assert_eq!(r.iter().filter(|&&d| d == ITEM_NONE).count(), 2);
        assert_eq!(p.place(72_916_709, 8).len(), 6);
    }

    #[test]
    fn replicas_are_capped() {
        let p = placer(SEED_MAP, &[]);
        assert_eq!(p.place(1, u32::MAX).len(), 6);
    }

    #[test]
    fn negative_reweight_ids_are_refused_and_unknown_ones_ignored() {
        let map = CrushMap::from_json(SEED_MAP).unwrap();
        assert!(Placer::new(map.clone(), None, &[(-1, 0)]).is_err());
        assert!(Placer::new(map, None, &[(99, 0)]).is_ok());
    }

    #[test]
    fn multi_step_rules_and_set_steps_run() {
        let text = SEED_MAP.replace(
            r#"["chooseleaf", "firstn", 0, "type", "host"]"#,
            r#"["set_choose_tries", 3], ["set_chooseleaf_vary_r", 0], ["set_chooseleaf_stable", 0],
               ["choose", "firstn", 0, "type", "host"], ["choose", "firstn", 1, "type", 0]"#,
        );
        let p = placer(&text, &[]);
        for x in 0..500 {
            let r = p.place(x, 3);
            assert!(r.len() <= 3 && !r.is_empty(), "x={x}: {r:?}");
            assert!(r.iter().all(|&d| (1..=6).contains(&d)));
        }
    }
}
