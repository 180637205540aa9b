//! Medians and spreads of repeated measurements.

use serde::Serialize;

/// The centre and spread of one quantity measured over several rounds.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The median (the mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Summary {
    /// Summarises `values`, ignoring NaNs; `None` when nothing is left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// The spread as a fraction of the median: how much to trust a ratio of two medians.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_counts_take_the_middle_value() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 9.0, 2.0]).expect("values");
        assert_eq!(s.median, 3.0);
        assert_eq!((s.min, s.max, s.n), (1.0, 9.0, 5));
    }

    #[test]
    fn even_counts_average_the_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert_eq!(s.spread(), 3.0 / 2.5);
    }

    #[test]
    fn nans_and_empty_inputs() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        let s = Summary::of(&[f64::NAN, 7.0]).expect("values");
        assert_eq!((s.median, s.n), (7.0, 1));
    }
}
