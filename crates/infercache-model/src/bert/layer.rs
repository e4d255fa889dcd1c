//! One encoder layer: self-attention, then the feed-forward block, each with a residual
//! connection and a layer norm (BERT's post-norm layout).

use safetensors::SafeTensors;

use super::kernels::{Epilogue, Kernel, Matrix, dot, layer_norm, linear, softmax, vectorized};
use super::weights::Tensors;
use super::{BertConfig, Hidden, Threads, for_each, row_blocks};
use crate::ModelError;

/// Encoder layer `i`, built from the tensors `encoder.layer.{i}.*`:
/// `attention.self.{query,key,value}`, `attention.output.dense`,
/// `attention.output.LayerNorm`, `intermediate.dense`, `output.dense` and
/// `output.LayerNorm` (each `.weight` and `.bias`).
///
/// The query, key and value projections are fused into one product at load.
#[derive(Clone, PartialEq)]
pub struct Layer {
    index: usize,
    /// `[hidden, 3 hidden]`: query | key | value.
    qkv: Matrix,
    qkv_bias: Vec<f32>,
    attention_out: Matrix,
    attention_out_bias: Vec<f32>,
    attention_norm: (Vec<f32>, Vec<f32>),
    up: Matrix,
    up_bias: Vec<f32>,
    down: Matrix,
    down_bias: Vec<f32>,
    output_norm: (Vec<f32>, Vec<f32>),
    heads: usize,
    head_dim: usize,
    eps: f32,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("index", &self.index)
            .field("width", &self.width())
            .field("heads", &self.heads)
            .field("intermediate", &self.up.cols)
            .finish_non_exhaustive()
    }
}

impl Layer {
    /// Loads layer `index` from `tensors` (F32, F16 or BF16; kept as `f32`).
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a tensor that is missing or has the wrong shape or
    /// dtype; [`ModelError::UnsupportedConfig`] for an index past `num_hidden_layers`.
    pub fn load(
        tensors: &SafeTensors<'_>,
        index: usize,
        config: &BertConfig,
    ) -> Result<Self, ModelError> {
        Self::from_tensors(&Tensors::new(tensors), index, config)
    }

    /// [`load`](Self::load) from tensors however they were read.
    pub(crate) fn from_tensors(
        t: &Tensors<'_, '_>,
        index: usize,
        config: &BertConfig,
    ) -> Result<Self, ModelError> {
        if index >= config.num_hidden_layers {
            return Err(ModelError::UnsupportedConfig(format!(
                "layer {index} of a model with {} layers",
                config.num_hidden_layers
            )));
        }
        let p = format!("encoder.layer.{index}");
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (q, qb) = t.linear(&format!("{p}.attention.self.query"), h, h)?;
        let (k, kb) = t.linear(&format!("{p}.attention.self.key"), h, h)?;
        let (v, vb) = t.linear(&format!("{p}.attention.self.value"), h, h)?;
        let (attention_out, attention_out_bias) =
            t.linear(&format!("{p}.attention.output.dense"), h, h)?;
        let (up, up_bias) = t.linear(&format!("{p}.intermediate.dense"), h, i)?;
        let (down, down_bias) = t.linear(&format!("{p}.output.dense"), i, h)?;
        Ok(Self {
            index,
            qkv: Matrix::concat_cols(&[q, k, v]),
            qkv_bias: [qb, kb, vb].concat(),
            attention_out,
            attention_out_bias,
            attention_norm: t.layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?,
            up,
            up_bias,
            down,
            down_bias,
            output_norm: t.layer_norm(&format!("{p}.output.LayerNorm"), h)?,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            eps: config.eps(),
        })
    }

    /// Which layer of the encoder this is.
    pub fn index(&self) -> usize {
        self.index
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Runs the layer on `hidden`: the next hidden states, same shape.
    ///
    /// # Errors
    /// [`ModelError::Shape`] if `hidden` is not as wide as the layer.
    pub fn forward(&self, hidden: &Hidden, threads: &Threads) -> Result<Hidden, ModelError> {
        let w = self.width();
        if hidden.width() != w {
            return Err(ModelError::Shape(format!(
                "hidden states of width {} into layer {} of width {w}",
                hidden.width(),
                self.index
            )));
        }
        let parts = threads.count();
        let x = hidden.states();
        let mut out = vec![0.0; x.len()];
        threads.run(|| {
            let mut first = 0;
            for group in sequence_groups(hidden.lengths()) {
                let rows = group.iter().sum::<usize>() * w;
                let range = first..first + rows;
                self.forward_group(&x[range.clone()], group, &mut out[range], parts);
                first += rows;
            }
        });
        Hidden::new(out, hidden.lengths().to_vec(), w)
    }

    /// The layer over one group of whole sequences (`lengths`), rows `x`, into `out`. Its
    /// buffers are sized for the group, not the batch.
    fn forward_group(&self, x: &[f32], lengths: &[usize], out: &mut [f32], parts: usize) {
        let w = self.width();
        let tokens = x.len() / w;
        let mut qkv = vec![0.0; tokens * 3 * w];
        linear(
            &mut qkv,
            x,
            &self.qkv,
            parts,
            Epilogue::Bias(&self.qkv_bias),
        );
        let context = self.attention(&qkv, lengths, parts);
        drop(qkv);

        let mut attended = vec![0.0; tokens * w];
        let epilogue = Epilogue::BiasResidual {
            bias: &self.attention_out_bias,
            residual: x,
            width: w,
        };
        linear(
            &mut attended,
            &context,
            &self.attention_out,
            parts,
            epilogue,
        );
        drop(context);
        self.normalize(&mut attended, &self.attention_norm, parts);

        let mut inner = vec![0.0; tokens * self.up.cols];
        linear(
            &mut inner,
            &attended,
            &self.up,
            parts,
            Epilogue::BiasGelu(&self.up_bias),
        );
        let epilogue = Epilogue::BiasResidual {
            bias: &self.down_bias,
            residual: &attended,
            width: w,
        };
        linear(out, &inner, &self.down, parts, epilogue);
        self.normalize(out, &self.output_norm, parts);
    }

    fn normalize(&self, rows: &mut [f32], (gamma, beta): &(Vec<f32>, Vec<f32>), parts: usize) {
        let w = self.width();
        for_each(row_blocks(rows, w, parts), parts, |(_, block)| {
            vectorized(NormRows {
                block,
                gamma,
                beta,
                eps: self.eps,
                width: w,
            });
        });
    }

    /// Scaled dot-product attention of every sequence over itself, from the fused
    /// projections `qkv` (`tokens × 3 hidden`); the context, `tokens × hidden`.
    ///
    /// Work items are whole sequences, or, with fewer sequences than threads, runs of
    /// query rows of each sequence: every row is computed the same way whatever the split.
    fn attention(&self, qkv: &[f32], lengths: &[usize], parts: usize) -> Vec<f32> {
        let w = self.width();
        let mut context = vec![0.0; qkv.len() / 3];
        let mut items = Vec::new();
        let mut rest = context.as_mut_slice();
        let mut offset = 0;
        for &len in lengths {
            let (mine, tail) = rest.split_at_mut(len * w);
            rest = tail;
            let sequence = &qkv[offset * 3 * w..(offset + len) * 3 * w];
            let split = if lengths.len() >= parts { 1 } else { parts };
            for (first, block) in row_blocks(mine, w, split) {
                items.push((sequence, len, first, block));
            }
            offset += len;
        }
        for_each(items, parts, |(sequence, len, first, block)| {
            vectorized(Attend {
                layer: self,
                qkv: sequence,
                len,
                first,
                out: block,
            });
        });
        context
    }

    /// Context rows `first..` of one sequence of `len` tokens into `out`.
    #[inline(always)]
    fn attend(&self, qkv: &[f32], len: usize, first: usize, out: &mut [f32]) {
        let (w, d) = (self.width(), self.head_dim);
        #[expect(
            clippy::cast_precision_loss,
            reason = "a head dimension is a small integer"
        )]
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0.0f32; len];
        for (i, row) in out.chunks_exact_mut(w).enumerate() {
            let query = &qkv[(first + i) * 3 * w..][..w];
            for h in 0..self.heads {
                let q = &query[h * d..][..d];
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(q, &qkv[j * 3 * w + w + h * d..][..d]) * scale;
                }
                softmax(&mut scores);
                let o = &mut row[h * d..][..d];
                o.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let v = &qkv[j * 3 * w + 2 * w + h * d..][..d];
                    for (o, v) in o.iter_mut().zip(v) {
                        *o = p.mul_add(*v, *o);
                    }
                }
            }
        }
    }
}

/// Most tokens a layer computes at once, in groups of whole sequences (a longer sequence
/// is a group of its own): a layer's buffers (the fused projections and the attention
/// context, then the feed-forward block's inner activations: at most 7.5 KiB per token at
/// once) are then bounded by the group, under 8 MiB, rather than growing with the batch
/// (`max_batch` texts of up to 256 tokens: 60 MiB at once for the default 32). 1,024 and
/// not less: smaller groups mean smaller matrix products, and 256 cost 6-9 % of the
/// throughput at batch 32 on short texts (`examples/bench_model.rs`), where a batch of 32
/// texts of 17 tokens is one group of 544. Every step is row by row except attention,
/// which stays within a sequence, so a text's vector does not depend on its group beyond
/// float rounding, as it does not on its batch.
const GROUP_TOKENS: usize = 1024;

/// `lengths` cut into runs of whole sequences of at most [`GROUP_TOKENS`] tokens (a
/// longer sequence alone).
fn sequence_groups(lengths: &[usize]) -> Vec<&[usize]> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > start && tokens + len > GROUP_TOKENS {
            groups.push(&lengths[start..i]);
            (start, tokens) = (i, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        groups.push(&lengths[start..]);
    }
    groups
}

/// Layer norm over every row of a block.
struct NormRows<'a> {
    block: &'a mut [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    width: usize,
}

impl Kernel for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for row in self.block.chunks_exact_mut(self.width) {
            layer_norm(row, self.gamma, self.beta, self.eps);
        }
    }
}

/// [`Layer::attend`] for one work item.
struct Attend<'a> {
    layer: &'a Layer,
    qkv: &'a [f32],
    len: usize,
    first: usize,
    out: &'a mut [f32],
}

impl Kernel for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        self.layer.attend(self.qkv, self.len, self.first, self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_grouped_whole_up_to_the_token_bound() {
        let none: Vec<&[usize]> = Vec::new();
        assert_eq!(sequence_groups(&[]), none);
        assert_eq!(sequence_groups(&[3, 4]), vec![&[3, 4][..]]);
        assert_eq!(
            sequence_groups(&[800, 224, 1, 1100, 10]),
            vec![&[800, 224][..], &[1][..], &[1100][..], &[10][..]]
        );
        let lengths = vec![20; 120];
        let groups = sequence_groups(&lengths);
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), 120);
        assert!(
            groups
                .iter()
                .all(|g| g.iter().sum::<usize>() <= GROUP_TOKENS)
        );
        assert_eq!(groups.len(), 3);
    }
}
