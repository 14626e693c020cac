//! Early stopping exactly as the original PEPLER scripts do it.
//!
//! After each epoch the validation loss is compared with the best so far: an improvement means "save a
//! checkpoint"; anything else counts one "endure". Training stops when the count reaches the limit
//! (5 in the original). The original never resets the count after an improvement, so five bad epochs
//! in total — not five in a row — end a stage. Each stage of sequential tuning starts a fresh counter
//! and a fresh best loss, as `main.py` does.

use serde::{Deserialize, Serialize};

/// What the trainer should do after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The validation loss is the best so far: save the model.
    Improved,
    /// Not an improvement; keep going (the count was increased).
    Endured(u32),
    /// Not an improvement and the count reached the limit: stop this stage.
    Stop,
}

/// The state of the early-stopping rule; serialisable so `--resume` continues it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// The best validation loss so far (`None` before the first epoch; JSON has no infinity).
    pub best_loss: Option<f64>,
    pub endured: u32,
    pub limit: u32,
}

impl EarlyStopping {
    pub fn new(limit: u32) -> Self {
        Self {
            best_loss: None,
            endured: 0,
            limit,
        }
    }

    /// Feeds one epoch's validation loss. A NaN loss is never an improvement.
    pub fn observe(&mut self, val_loss: f64) -> Verdict {
        if self.best_loss.is_none_or(|best| val_loss < best) && !val_loss.is_nan() {
            self.best_loss = Some(val_loss);
            Verdict::Improved
        } else {
            self.endured += 1;
            if self.endured >= self.limit {
                Verdict::Stop
            } else {
                Verdict::Endured(self.endured)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_never_reset_by_an_improvement() {
        let mut es = EarlyStopping::new(3);
        assert_eq!(es.observe(5.0), Verdict::Improved);
        assert_eq!(es.observe(6.0), Verdict::Endured(1));
        assert_eq!(es.observe(4.0), Verdict::Improved);
        assert_eq!(es.observe(4.0), Verdict::Endured(2)); // equal is not better
        assert_eq!(es.observe(3.0), Verdict::Improved);
        assert_eq!(es.observe(f64::NAN), Verdict::Stop);
        assert_eq!(es.best_loss, Some(3.0));
        let json = serde_json::to_string(&EarlyStopping::new(5)).unwrap();
        assert_eq!(
            serde_json::from_str::<EarlyStopping>(&json).unwrap(),
            EarlyStopping::new(5)
        );
    }
}
