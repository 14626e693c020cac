//! Padded batches over an [`EncodedSplit`]: a fixed-order iterator for evaluation and a seeded
//! shuffling iterator for training (the original shuffles the training split every epoch).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::encode::EncodedSplit;
use super::jsonl::shuffle;

/// How far text rows are right-padded with `<pad>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// To the longest row of the batch. Text padding is masked out of attention and loss, so
    /// this gives the same loss as the original with less work.
    #[default]
    Batch,
    /// To the longest row of the split, as the original (`tokenizer(t, padding=True)` over the
    /// whole split). Matters only where the padded length is observable, e.g. the original's
    /// generation loop runs `seq.size(1)` steps.
    Split,
}

/// One batch, row-major. `text`/`mask` are `B x seq_len`; `prompt` is `B x prompt_len`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub users: Vec<u32>,
    pub items: Vec<u32>,
    pub ratings: Vec<f32>,
    /// `<bos> w.. <eos> <pad>..`
    pub text: Vec<u32>,
    /// 1 on real tokens (including `<bos>`/`<eos>`), 0 on padding.
    pub mask: Vec<u8>,
    pub seq_len: usize,
    /// Discrete prompt (feature tokens right-padded with `<pad>`; all positions are attended,
    /// as in the original). `None` for the continuous prompt.
    pub prompt: Option<Vec<u32>>,
    pub prompt_len: usize,
    /// Ground-truth template feature per row (FMR).
    pub features: Vec<String>,
    /// Row positions within the split (index into the `EncodedSplit` vectors).
    pub rows: Vec<usize>,
}

impl Batch {
    /// Number of rows B.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The model's view of this batch (`model::batch::Batch`); the prompt is empty (p = 0)
    /// for the continuous prompt.
    pub fn to_model_batch(&self) -> crate::model::batch::Batch {
        crate::model::batch::Batch {
            b: self.len(),
            t: self.seq_len,
            p: self.prompt.as_ref().map_or(0, |_| self.prompt_len),
            users: self.users.clone(),
            items: self.items.clone(),
            text: self.text.clone(),
            mask: self.mask.clone(),
            rating: self.ratings.clone(),
            prompt: self.prompt.clone().unwrap_or_default(),
        }
    }
}

impl EncodedSplit {
    /// Assembles the rows `rows` (positions within this split) into one padded batch.
    /// Positions out of range are skipped (they cannot come from this module's iterators).
    pub fn make_batch(&self, rows: &[usize], padding: Padding) -> Batch {
        let rows: Vec<usize> = rows.iter().copied().filter(|&r| r < self.len()).collect();
        let seq_len = match padding {
            Padding::Batch => rows
                .iter()
                .map(|&r| self.sequences[r].len())
                .max()
                .unwrap_or(0),
            Padding::Split => self.max_seq_len,
        };
        let b = rows.len();
        let mut text = vec![self.pad_id; b * seq_len];
        let mut mask = vec![0u8; b * seq_len];
        for (k, &r) in rows.iter().enumerate() {
            let s = &self.sequences[r];
            text[k * seq_len..k * seq_len + s.len()].copy_from_slice(s);
            mask[k * seq_len..k * seq_len + s.len()].fill(1);
        }
        let prompt_len = self.prompt_width;
        let prompt = self.prompts.as_ref().map(|p| {
            let mut out = vec![self.pad_id; b * prompt_len];
            for (k, &r) in rows.iter().enumerate() {
                let ids = &p[r][..p[r].len().min(prompt_len)];
                out[k * prompt_len..k * prompt_len + ids.len()].copy_from_slice(ids);
            }
            out
        });
        Batch {
            users: rows.iter().map(|&r| self.users[r]).collect(),
            items: rows.iter().map(|&r| self.items[r]).collect(),
            ratings: rows.iter().map(|&r| self.ratings[r]).collect(),
            text,
            mask,
            seq_len,
            prompt,
            prompt_len,
            features: rows.iter().map(|&r| self.features[r].clone()).collect(),
            rows,
        }
    }

    /// Batches in split order (evaluation, generation). `batch_size` 0 is treated as 1.
    pub fn batches(&self, batch_size: usize, padding: Padding) -> Batches<'_> {
        Batches {
            split: self,
            order: (0..self.len()).collect(),
            pos: 0,
            batch_size: batch_size.max(1),
            padding,
        }
    }

    /// Batches in a shuffled order that depends only on (`seed`, `epoch`), so a resumed run
    /// sees the same order. The original shuffles with Python's global `random` and leaves the
    /// first epoch in file order; we shuffle every epoch, including the first.
    pub fn shuffled_batches(
        &self,
        batch_size: usize,
        padding: Padding,
        seed: u64,
        epoch: u64,
    ) -> Batches<'_> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        shuffle(&mut order, &mut rng);
        Batches {
            split: self,
            order,
            pos: 0,
            batch_size: batch_size.max(1),
            padding,
        }
    }
}

/// Iterator over the batches of a split; the last batch may be smaller.
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    split: &'a EncodedSplit,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    padding: Padding,
}

impl Batches<'_> {
    /// The row order this iterator walks (positions within the split).
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let batch = self
            .split
            .make_batch(&self.order[self.pos..end], self.padding);
        self.pos = end;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.order.len() - self.pos).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}
