//! A compact vocabulary for the built-in, randomly initialised tiny GPT-2.
//!
//! A pretrained GPT-2 needs all 50260 rows of its embedding table. A randomly initialised model
//! does not: rows of tokens that never occur carry no information, yet with a 64-wide model the
//! LM head over 50260 tokens is ~99% of the work of a training step. So, for the built-in model
//! only, the token ids that occur in the dataset (all splits, plus `<bos>`, `<eos>`, `<pad>`) are
//! renumbered densely in increasing GPT-2 id order; tokenization and decoding still use GPT-2's BPE,
//! and ids are mapped back before anything is decoded or scored. `--full-vocab` turns this off.
//! The map is a pure function of the dataset and tokenizer, so `evaluate` rebuilds the same map,
//! and checkpoints record it to detect a mismatch.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::EncodedSplit;

/// GPT-2 id <-> compact model id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabMap {
    /// `to_tokenizer[model_id]` = GPT-2 id, increasing.
    to_tokenizer: Vec<u32>,
    #[serde(skip)]
    to_model: HashMap<u32, u32>,
}

impl VocabMap {
    /// Every token id occurring in `splits` (texts and discrete prompts) plus `specials`.
    pub fn from_splits(splits: &[&EncodedSplit], specials: &[u32]) -> Self {
        let mut ids: BTreeSet<u32> = specials.iter().copied().collect();
        for s in splits {
            ids.extend(s.sequences.iter().flatten().copied());
            if let Some(p) = &s.prompts {
                ids.extend(p.iter().flatten().copied());
            }
        }
        Self::from_ids(ids.into_iter().collect())
    }

    fn from_ids(to_tokenizer: Vec<u32>) -> Self {
        let to_model = to_tokenizer
            .iter()
            .enumerate()
            .map(|(m, &t)| (t, m as u32))
            .collect();
        VocabMap {
            to_tokenizer,
            to_model,
        }
    }

    /// Rebuilds the lookup table after deserialisation.
    pub fn restored(self) -> Self {
        Self::from_ids(self.to_tokenizer)
    }

    /// Number of model tokens.
    pub fn len(&self) -> usize {
        self.to_tokenizer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to_tokenizer.is_empty()
    }

    /// The model id of tokenizer id `id`.
    pub fn to_model(&self, id: u32) -> Result<u32> {
        match self.to_model.get(&id) {
            Some(&m) => Ok(m),
            None => bail!("token {id} is not in the model's compact vocabulary"),
        }
    }

    /// The tokenizer id of model id `id` (ids past the end cannot come from this model).
    pub fn to_tokenizer(&self, id: u32) -> Result<u32> {
        match self.to_tokenizer.get(id as usize) {
            Some(&t) => Ok(t),
            None => bail!(
                "model token {id} is outside the compact vocabulary of {}",
                self.len()
            ),
        }
    }

    /// Renumbers a split's texts, prompts and special ids into model ids.
    pub fn apply(&self, split: &mut EncodedSplit) -> Result<()> {
        for seq in split.sequences.iter_mut() {
            for t in seq.iter_mut() {
                *t = self.to_model(*t)?;
            }
        }
        if let Some(prompts) = &mut split.prompts {
            for t in prompts.iter_mut().flatten() {
                *t = self.to_model(*t)?;
            }
        }
        split.bos_id = self.to_model(split.bos_id)?;
        split.eos_id = self.to_model(split.eos_id)?;
        split.pad_id = self.to_model(split.pad_id)?;
        Ok(())
    }

    /// Model ids back to tokenizer ids.
    pub fn unmap(&self, ids: &[u32]) -> Result<Vec<u32>> {
        ids.iter().map(|&i| self.to_tokenizer(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let m = VocabMap::from_ids(vec![5, 50257, 50258, 50259]);
        assert_eq!(m.to_model(50258).unwrap(), 2);
        assert_eq!(m.unmap(&[0, 3]).unwrap(), vec![5, 50259]);
        assert!(m.to_model(6).is_err());
        assert!(m.to_tokenizer(4).is_err());
        let json = serde_json::to_string(&m).unwrap();
        let back: VocabMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back.restored(), m);
    }
}
