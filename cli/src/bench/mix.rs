//! The request mix of `cartdb bench`: the operation kinds and their relative weights
//! (`--mix insert=50,delete=25,list_all=25`), and the pick of a kind from a random roll.

use std::str::FromStr;

/// An operation the benchmark sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Insert,
    Delete,
    ListAll,
    ListCategory,
    Products,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Insert,
        OpKind::Delete,
        OpKind::ListAll,
        OpKind::ListCategory,
        OpKind::Products,
    ];

    /// The name used in `--mix` and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Insert => "insert",
            OpKind::Delete => "delete",
            OpKind::ListAll => "list_all",
            OpKind::ListCategory => "list_category",
            OpKind::Products => "products",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Relative weights of the operation kinds (`--mix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; OpKind::ALL.len()],
}

impl Mix {
    /// The weight of `kind`.
    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The sum of the weights (at least 1 for a parsed mix).
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }

    /// The kind a roll in `0..total()` stands for: each kind owns a run of rolls as long as
    /// its weight, so a uniform roll picks kinds in proportion to their weights.
    pub fn pick(&self, roll: u64) -> OpKind {
        let mut rest = roll;
        for kind in OpKind::ALL {
            let weight = u64::from(self.weight(kind));
            if rest < weight {
                return kind;
            }
            rest -= weight;
        }
        // Only reachable for a roll >= total(); the last kind with weight is as good as any.
        OpKind::ALL
            .into_iter()
            .rev()
            .find(|&k| self.weight(k) > 0)
            .unwrap_or(OpKind::Insert)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = [None; OpKind::ALL.len()];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not kind=weight"))?;
            let kind = OpKind::from_name(name.trim()).ok_or_else(|| {
                let known: Vec<_> = OpKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown operation {name:?}; known: {}", known.join(", "))
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a whole number, not {weight:?}"))?;
            if weights[kind.index()].replace(weight).is_some() {
                return Err(format!("{name} is listed twice"));
            }
        }
        let mix = Mix {
            weights: weights.map(|w| w.unwrap_or(0)),
        };
        if mix.total() == 0 {
            return Err("the weights must add up to more than 0".to_owned());
        }
        Ok(mix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mix(text: &str) -> Mix {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_mix_parses_weights_and_defaults_missing_kinds_to_zero() {
        let m = mix("insert=50, delete=25,list_all=25");
        assert_eq!(m.weight(OpKind::Insert), 50);
        assert_eq!(m.weight(OpKind::Delete), 25);
        assert_eq!(m.weight(OpKind::ListAll), 25);
        assert_eq!(m.weight(OpKind::Products), 0);
        assert_eq!(m.total(), 100);
        assert_eq!(mix("products=1").total(), 1);
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        let err = |text: &str| text.parse::<Mix>().unwrap_err();
        assert!(err("insert=0,delete=0").contains("more than 0"));
        assert!(err("").contains("more than 0"));
        assert!(err("buy=5").contains("unknown operation \"buy\""));
        assert!(err("insert").contains("kind=weight"));
        assert!(err("insert=x").contains("whole number"));
        assert!(err("insert=-1").contains("whole number"));
        assert!(err("insert=1,insert=2").contains("twice"));
    }

    #[test]
    fn picks_follow_the_weights() {
        let m = mix("insert=2,delete=1,products=1");
        let picks: Vec<OpKind> = (0..m.total()).map(|roll| m.pick(roll)).collect();
        assert_eq!(
            picks,
            [
                OpKind::Insert,
                OpKind::Insert,
                OpKind::Delete,
                OpKind::Products
            ]
        );
        assert_eq!(m.pick(99), OpKind::Products);
    }
}
