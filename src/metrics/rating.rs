//! Rating-prediction errors of the original PEPLER (`utils.py`: `mean_absolute_error`,
//! `root_mean_square_error`): each prediction is clipped to `[min_rating, max_rating]` of the
//! whole data set (first `p > max -> max`, then `p < min -> min`), errors summed sequentially in
//! sample order (Python's loop), divided by the count.
//!
//! The original feeds float32 values (`tensor.tolist()`) into float64 Python arithmetic; pass
//! them widened to f64 to get the same numbers.

/// Clipped predictions' error sum, as the original's loop (`mae=false`: squared errors).
fn error_sum(truth: &[f64], predicted: &[f64], min_r: f64, max_r: f64, absolute: bool) -> f64 {
    let mut total = 0.0;
    for (&r, &p) in truth.iter().zip(predicted) {
        let mut p = p;
        if p > max_r {
            p = max_r;
        }
        if p < min_r {
            p = min_r;
        }
        let sub = p - r;
        total += if absolute { sub.abs() } else { sub * sub };
    }
    total
}

/// MAE over `zip(truth, predicted)` with clipping. NaN for no pairs (Python would raise).
pub fn mean_absolute_error(truth: &[f64], predicted: &[f64], min_r: f64, max_r: f64) -> f64 {
    let n = truth.len().min(predicted.len());
    error_sum(truth, predicted, min_r, max_r, true) / n as f64
}

/// RMSE over `zip(truth, predicted)` with clipping. NaN for no pairs.
pub fn root_mean_square_error(truth: &[f64], predicted: &[f64], min_r: f64, max_r: f64) -> f64 {
    let n = truth.len().min(predicted.len());
    (error_sum(truth, predicted, min_r, max_r, false) / n as f64).sqrt()
}
