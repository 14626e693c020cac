//! GPT-2 BPE tokenizer with PEPLER's added tokens.
