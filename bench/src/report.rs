//! The results of one bench run, as written to `bench/results/*.json`:
//! every figure (or why it is missing), the goal each row is judged by, and
//! where and on what the run was made. The README table is drawn from this
//! file alone (see readme.rs).

use serde::{Deserialize, Serialize};

use crate::profile::Profile;
use crate::provenance::Provenance;

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// One number, or the reason it was not measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

impl Figure {
    pub fn of(value: f64) -> Figure {
        Figure { value: Some(value), missing: None }
    }

    pub fn missing(reason: impl Into<String>) -> Figure {
        Figure { value: None, missing: Some(reason.into()) }
    }

    /// `value` when there is one, else missing for `reason`.
    pub fn or_missing(value: Option<f64>, reason: impl Into<String>) -> Figure {
        match value {
            Some(v) => Figure::of(v),
            None => Figure::missing(reason),
        }
    }
}

/// The goal a row is judged by, in the terms issue 15 states it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "limit")]
pub enum Goal {
    /// ibex / reference must be at least this (rates: bulk, TPS, copy).
    ReferenceAtLeast(f64),
    /// ibex / reference must be at most this (times: capture, plugin).
    ReferenceAtMost(f64),
    /// ibex's time / Bucardo's time must be at most this (the tutorial).
    BucardoAtMost(f64),
    /// ibex's figure must be below this (latency, memory, catch-up).
    Below(f64),
}

impl Goal {
    /// The ratio this goal is stated in, when its figures were measured.
    pub fn ratio(self, ibex: &Figure, bucardo: &Figure, reference: &Figure) -> Option<f64> {
        let i = ibex.value?;
        let other = match self {
            Goal::ReferenceAtLeast(_) | Goal::ReferenceAtMost(_) => reference.value?,
            // Absolute goals are still shown against Bucardo, which is
            // what a reader compares them with.
            Goal::BucardoAtMost(_) | Goal::Below(_) => bucardo.value?,
        };
        (other > 0.0).then(|| i / other)
    }

    pub fn met(self, ibex: &Figure, ratio: Option<f64>) -> Option<bool> {
        match self {
            Goal::ReferenceAtLeast(limit) => ratio.map(|r| r >= limit),
            Goal::ReferenceAtMost(limit) | Goal::BucardoAtMost(limit) => ratio.map(|r| r <= limit),
            Goal::Below(limit) => ibex.value.map(|v| v < limit),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Stable name the README table looks rows up by (e.g. `bulk`).
    pub id: String,
    pub scenario: String,
    pub measure: String,
    pub unit: String,
    pub better: Better,
    pub ibex: Figure,
    pub bucardo: Figure,
    /// What ibex is held against besides Bucardo: the raw COPY pipe, the
    /// same work without triggers, or the built-in strategy.
    pub reference: Figure,
    pub reference_is: String,
    /// None for rows kept for the record only (e.g. latency p90, max).
    pub goal: Option<Goal>,
    pub goal_text: String,
    /// The ratio the goal is stated in (see [`Goal::ratio`]).
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

/// One row being filled in by a scenario.
pub struct Measure {
    row: Row,
}

impl Measure {
    pub fn new(id: &str, scenario: &str, measure: impl Into<String>, unit: &str, better: Better) -> Measure {
        Measure {
            row: Row {
                id: id.into(),
                scenario: scenario.into(),
                measure: measure.into(),
                unit: unit.into(),
                better,
                ibex: Figure::missing("not measured by this scenario"),
                bucardo: Figure::missing("not measured by this scenario"),
                reference: Figure::missing("no reference for this measure"),
                reference_is: String::new(),
                goal: None,
                goal_text: String::new(),
                ratio: None,
                met: None,
            },
        }
    }
    pub fn ibex(mut self, f: Figure) -> Self {
        self.row.ibex = f;
        self
    }
    pub fn bucardo(mut self, f: Figure) -> Self {
        self.row.bucardo = f;
        self
    }
    pub fn reference(mut self, f: Figure, what: &str) -> Self {
        self.row.reference = f;
        self.row.reference_is = what.into();
        self
    }
    pub fn goal(mut self, goal: Goal, text: &str) -> Self {
        self.row.goal = Some(goal);
        self.row.goal_text = text.into();
        self
    }
}

/// How one scenario went: its rows are in [`Results::rows`]; a failed
/// scenario leaves the reason here, and the README shows its rows as not
/// measured for that reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioRun {
    pub name: String,
    pub seconds: f64,
    pub error: Option<String>,
}

/// Everything one `ibex-bench` invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub provenance: Provenance,
    pub scenarios: Vec<ScenarioRun>,
    pub rows: Vec<Row>,
    /// ibex's per-phase timings, per engine run group (see profile.rs).
    pub profiles: Vec<Profile>,
}

impl Results {
    pub fn new(provenance: Provenance) -> Results {
        Results { provenance, scenarios: Vec::new(), rows: Vec::new(), profiles: Vec::new() }
    }

    pub fn add(&mut self, m: Measure) {
        let mut row = m.row;
        row.ratio = row.goal.and_then(|g| g.ratio(&row.ibex, &row.bucardo, &row.reference));
        row.met = row.goal.and_then(|g| g.met(&row.ibex, row.ratio));
        eprintln!(
            "  {} / {}: ibex {}, Bucardo {}, {} {}{}",
            row.scenario,
            row.measure,
            show(&row.ibex, &row.unit),
            show(&row.bucardo, &row.unit),
            if row.reference_is.is_empty() { "reference" } else { &row.reference_is },
            show(&row.reference, &row.unit),
            row.ratio.map(|r| format!(", ratio {r:.3}")).unwrap_or_default()
        );
        self.rows.push(row);
    }

    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    pub fn scenario(&self, name: &str) -> Option<&ScenarioRun> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// A figure with its unit, for the log.
pub fn show(f: &Figure, unit: &str) -> String {
    match f.value {
        Some(v) => format!("{} {unit}", number(v)),
        None => "not measured".into(),
    }
}

/// Three significant digits or so, without a needless fraction.
pub fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_goal() {
        let (i, b, r) = (Figure::of(2.0), Figure::of(10.0), Figure::of(4.0));
        assert_eq!(Goal::ReferenceAtLeast(0.5).ratio(&i, &b, &r), Some(0.5));
        assert_eq!(Goal::ReferenceAtLeast(0.5).met(&i, Some(0.5)), Some(true));
        assert_eq!(Goal::BucardoAtMost(0.2).ratio(&i, &b, &r), Some(0.2));
        assert_eq!(Goal::ReferenceAtMost(1.3).met(&i, Some(1.31)), Some(false));
        assert_eq!(Goal::Below(2.0).met(&i, None), Some(false));
        let none = Figure::missing("x");
        assert_eq!(Goal::ReferenceAtMost(1.3).ratio(&i, &b, &none), None);
        assert_eq!(Goal::Below(20.0).met(&none, None), None);
    }
}
