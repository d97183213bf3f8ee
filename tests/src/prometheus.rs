//! Scraping `GET /metrics` and reading the Prometheus text format, strictly: a line that is
//! neither a comment nor `name{labels} value` fails the parse, so a test that scrapes also
//! checks the format.

use std::collections::BTreeMap;

use anyhow::{Context, bail, ensure};

/// One scrape: every sample by its series (`name{label="value",...}` exactly as exposed,
/// labels in the exporter's order).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parses the text format.
    ///
    /// # Errors
    /// The first line that is not a comment, a blank or a `series value [timestamp]` sample,
    /// with its number.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut samples = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) =
                split_sample(line).with_context(|| format!("line {}: {line:?}", number + 1))?;
            samples.insert(series.to_owned(), value);
        }
        ensure!(!samples.is_empty(), "no samples in {} bytes", text.len());
        Ok(Self { samples })
    }

    /// The sum of every series named `name` whose labels include each of `labels`
    /// (`key="value"` pairs); 0 when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (series_name, series_labels) =
                    series.split_once('{').unwrap_or((series.as_str(), ""));
                series_name == name
                    && labels
                        .iter()
                        .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// Whether any series is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples
            .keys()
            .any(|series| series.split('{').next() == Some(name))
    }
}

/// `series value [timestamp]` -> (series, value). Label values may hold spaces, so the
/// series ends at the closing brace when there is one.
fn split_sample(line: &str) -> anyhow::Result<(&str, f64)> {
    let split_at = match line.find('{') {
        Some(_) => line.rfind('}').context("an unclosed label set")? + 1,
        None => line.find(' ').context("no value")?,
    };
    let (series, rest) = line.split_at(split_at);
    let name = series.split('{').next().unwrap_or_default();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bail!("bad metric name {name:?}");
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .with_context(|| format!("value {number:?} is not a number"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .with_context(|| format!("timestamp {timestamp:?} is not an integer"))?;
    }
    ensure!(fields.next().is_none(), "trailing fields");
    Ok((series, value))
}

/// Scrapes `http://address/metrics` and parses it.
///
/// # Errors
/// When the endpoint cannot be reached, answers other than 200 with the text format, or the
/// body does not parse.
pub async fn scrape(address: &str) -> anyhow::Result<Scrape> {
    let url = format!("http://{address}/metrics");
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response
        .text()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(status == 200, "GET {url}: {status}: {text}");
    ensure!(
        content_type.starts_with("text/plain"),
        "GET {url}: content type {content_type:?}"
    );
    Scrape::parse(&text).with_context(|| format!("parsing GET {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_parsed_and_summed_by_label() {
        let text = "# HELP x_total things\n# TYPE x_total counter\n\
                    x_total{kind=\"a b\",device=\"1\"} 3\nx_total{kind=\"c\",device=\"2\"} 4\n\
                    y_seconds_bucket{le=\"+Inf\"} 7 1700000000\nup 1\n";
        let scrape = Scrape::parse(text).unwrap();
        assert!((scrape.sum("x_total", &[]) - 7.0).abs() < f64::EPSILON);
        assert!((scrape.sum("x_total", &[("device", "2")]) - 4.0).abs() < f64::EPSILON);
        assert!((scrape.sum("up", &[]) - 1.0).abs() < f64::EPSILON);
        assert!(scrape.has("y_seconds_bucket"));
        assert!(Scrape::parse("x_total{a=\"1\" 3\n").is_err());
        assert!(Scrape::parse("x_total three\n").is_err());
        assert!(Scrape::parse("bad-name 1\n").is_err());
    }
}
