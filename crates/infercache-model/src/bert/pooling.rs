//! Pooling: one vector per sequence from its tokens' hidden states.

use super::Hidden;
use super::kernels::{Kernel, dot, vectorized};

/// Mean pooling over each sequence's tokens, then L2 normalisation: sentence-transformers'
/// `Pooling(mean)` + `Normalize` for this model (no tensors). With no padding in
/// [`Hidden`], every token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeanPooling;

impl MeanPooling {
    /// One unit vector per sequence, in order (a zero mean stays zero).
    pub fn forward(&self, hidden: &Hidden) -> Vec<Vec<f32>> {
        vectorized(Pool { hidden })
    }
}

struct Pool<'a> {
    hidden: &'a Hidden,
}

impl Kernel for Pool<'_> {
    type Output = Vec<Vec<f32>>;

    #[inline(always)]
    fn run(self) -> Vec<Vec<f32>> {
        let hidden = self.hidden;
        let w = hidden.width();
        let mut rows = hidden.states().chunks_exact(w);
        hidden
            .lengths()
            .iter()
            .map(|&len| {
                let mut mean = vec![0.0f32; w];
                for row in rows.by_ref().take(len) {
                    for (m, x) in mean.iter_mut().zip(row) {
                        *m += x;
                    }
                }
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a sequence has at most a few thousand tokens"
                )]
                let count = len as f32;
                mean.iter_mut().for_each(|m| *m /= count);
                let norm = dot(&mean, &mean).sqrt().max(1e-12);
                mean.iter_mut().for_each(|m| *m /= norm);
                mean
            })
            .collect()
    }
}
