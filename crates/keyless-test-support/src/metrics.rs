//! Reading keyless's `/metrics` (Prometheus text format).

/// The sum of the samples of metric `name` whose labels include every one of `labels`
/// (0 when there is none).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let padded = format!(",{labels},");
            let has_all = wanted.iter().all(|w| padded.contains(&format!(",{w},")));
            has_all.then(|| value.trim().parse::<f64>().unwrap_or_else(|e| panic!("{line}: {e}")) as u64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_with_all_the_labels_of_exactly_that_metric() {
        let text = "# TYPE keyless_x counter\n\
                    keyless_x_total{provider=\"aws\",outcome=\"success\"} 3\n\
                    keyless_x_total{provider=\"aws\",outcome=\"failure\"} 2\n\
                    keyless_x_total{provider=\"gcp\",outcome=\"success\"} 5\n\
                    keyless_x_total_created{provider=\"aws\"} 1700000000\n\
                    keyless_y 7\n";
        assert_eq!(sum(text, "keyless_x_total", &[("provider", "aws")]), 5);
        assert_eq!(sum(text, "keyless_x_total", &[("provider", "aws"), ("outcome", "success")]), 3);
        assert_eq!(sum(text, "keyless_x_total", &[]), 10);
        assert_eq!(sum(text, "keyless_x_total", &[("provider", "azure")]), 0);
        assert_eq!(sum(text, "keyless_y", &[]), 7);
    }
}
