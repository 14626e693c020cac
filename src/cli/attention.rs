//! `pepler-cuda attention`: the attention heatmap of one (user, item) explanation (the paper's
//! Fig. 8), optionally beside the untrained model's.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::experiment::attention::{AttentionJob, HeadSel, LayerSel};

/// Generate the explanation for a (user, item) pair with a trained run's best model and draw the
/// attention weights of one layer over [user, item, <bos>, generated words] as attention.png and
/// attention.svg (token labels on both axes, a colour bar), plus the numbers in attention.json.
#[derive(Clone, Debug, Args)]
pub struct AttentionArgs {
    /// The run directory `train` (or an experiment) wrote (holds model.safetensors, model.json).
    #[arg(long, default_value = "runs/pepler", value_name = "DIR")]
    pub run: PathBuf,
    /// The user's id as the data set spells it (the `user` field of the reviews).
    #[arg(long, value_name = "U")]
    pub user: String,
    /// The item's id as the data set spells it (the `item` field of the reviews).
    #[arg(long, value_name = "I")]
    pub item: String,
    /// Which layer: `last` (as the paper) or an index from 0.
    #[arg(long, default_value = "last")]
    pub layer: LayerSel,
    /// Which head: `mean` (the mean over heads) or an index from 0.
    #[arg(long, default_value = "mean")]
    pub head: HeadSel,
    /// Also draw the untrained model (the run's initial weights, same seed) beside it, over its
    /// own generated words, as the paper's Fig. 8 (before / after training).
    #[arg(long)]
    pub compare_init: bool,
    /// Output directory for attention.png, attention.svg and attention.json (default: the run
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where and how the job computes.
    #[command(flatten)]
    pub run_on: super::backend::DeviceArgs,
}

pub fn run(args: &AttentionArgs) -> Result<i32> {
    super::backend::configure_threads(args.run_on.threads)?;
    let job = AttentionJob {
        run_dir: args.run.clone(),
        user: args.user.clone(),
        item: args.item.clone(),
        layer: args.layer,
        head: args.head,
        compare_init: args.compare_init,
        out_dir: args.out.clone().unwrap_or_else(|| args.run.clone()),
    };
    let out = super::backend::dispatch(args.run_on.device, args.run_on.precision, job)?;
    for p in &out.panels {
        println!("{}: {}", p.model, p.explanation);
    }
    for f in &out.files {
        println!("{}", f.display());
    }
    Ok(0)
}
