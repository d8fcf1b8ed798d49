//! Making Prometheus metrics, as both planes do: [`Registrar`] builds a
//! metric from its name, help, labels and buckets and registers it in the
//! registry in the same call, so every metric is declared in one place and
//! none is made without being exported.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Registers the metrics it makes in one registry. A name registered twice
/// is an error from the registry (a bug: each set is built once).
#[derive(Debug, Clone, Copy)]
pub struct Registrar<'r>(pub &'r Registry);

impl Registrar<'_> {
    /// Register `metric` and hand it back.
    pub fn metric<M: Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> Result<M, prometheus::Error> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.metric(IntCounter::new(name, help)?)
    }

    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.metric(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.metric(IntGauge::new(name, help)?)
    }

    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.metric(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A histogram with these bucket bounds, in seconds (or
    /// [`prometheus::DEFAULT_BUCKETS`]).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.metric(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )?)
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        self.metric(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_metrics_are_registered_once() {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let counter = r.counter("made_total", "A counter.").unwrap();
        counter.inc();
        let families = registry.gather();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].name(), "made_total");
        assert!(r.counter("made_total", "Again.").is_err());
    }
}
