//! What a run found: a verdict per rule, as text for a person and as JUnit XML for CI.

use std::fmt;
use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use url::Url;

use crate::call::Exchange;
use crate::rules::Rule;

/// How one rule fared.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The rule held; a note on what was seen, when there is one.
    Held(Option<String>),
    /// The rule broke: why, and the calls that broke it.
    Broken {
        why: String,
        exchanges: Vec<Exchange>,
    },
    /// Not checked, and why.
    Skipped(String),
}

impl Verdict {
    pub(crate) fn held(note: impl Into<String>) -> Self {
        Self::Held(Some(note.into()))
    }

    pub(crate) fn broken(why: impl Into<String>, exchanges: Vec<Exchange>) -> Self {
        Self::Broken {
            why: why.into(),
            exchanges,
        }
    }
}

/// A rule and its verdict.
#[derive(Debug, Clone)]
pub struct RuleResult {
    pub rule: Rule,
    pub verdict: Verdict,
    pub took: Duration,
}

impl RuleResult {
    pub(crate) fn new(rule: Rule, verdict: Verdict, took: Duration) -> Self {
        Self {
            rule,
            verdict,
            took,
        }
    }
}

/// Every rule's verdict against one participant.
#[derive(Debug, Clone)]
pub struct Report {
    pub try_url: Url,
    pub results: Vec<RuleResult>,
    /// Holds the checker made and could not cancel.
    pub left_behind: Vec<String>,
    pub took: Duration,
}

impl Report {
    /// The names of the rules that broke.
    #[must_use]
    pub fn broken(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Broken { .. }))
            .map(|r| r.rule.id())
            .collect()
    }

    /// Whether no rule broke (skipped rules were not checked) and nothing was left behind.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.broken().is_empty() && self.left_behind.is_empty()
    }

    /// The report as JUnit XML: one test case per rule.
    ///
    /// # Panics
    /// Never: the XML is written to memory.
    #[must_use]
    pub fn junit(&self) -> String {
        let mut suite = TestSuite::new(format!("tcc-participant-check {}", self.try_url));
        suite.set_time(self.took);
        for result in &self.results {
            let status = match &result.verdict {
                Verdict::Held(_) => TestCaseStatus::success(),
                Verdict::Broken { why, exchanges } => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(why.as_str());
                    status.set_description(shown(exchanges));
                    status
                }
                Verdict::Skipped(why) => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(why.as_str());
                    status
                }
            };
            let mut case = TestCase::new(result.rule.id(), status);
            case.set_classname("participant-contract");
            case.set_time(result.took);
            if let Verdict::Held(Some(note)) = &result.verdict {
                case.set_system_out(note.as_str());
            }
            suite.add_test_case(case);
        }
        if !self.left_behind.is_empty() {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message("holds the checker made could not be cancelled");
            status.set_description(self.left_behind.join("\n"));
            suite.add_test_case(TestCase::new("clean-up", status));
        }
        let mut report = quick_junit::Report::new("tcc-participant-check");
        report.add_test_suite(suite);
        report.to_string().expect("XML is written to memory")
    }
}

fn shown(exchanges: &[Exchange]) -> String {
    exchanges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tcc-participant-check: {}", self.try_url)?;
        let (mut held, mut broken, mut skipped) = (0, 0, 0);
        for result in &self.results {
            let id = result.rule.id();
            match &result.verdict {
                Verdict::Held(note) => {
                    held += 1;
                    writeln!(f, "  ok    {id:<30} {}", result.rule.asks())?;
                    if let Some(note) = note {
                        writeln!(f, "        {:<30} ({note})", "")?;
                    }
                }
                Verdict::Broken { why, exchanges } => {
                    broken += 1;
                    writeln!(f, "  FAIL  {id:<30} {}", result.rule.asks())?;
                    writeln!(f, "        broken: {why}")?;
                    for line in shown(exchanges).lines() {
                        writeln!(f, "          {line}")?;
                    }
                }
                Verdict::Skipped(why) => {
                    skipped += 1;
                    writeln!(f, "  skip  {id:<30} {why}")?;
                }
            }
        }
        for left in &self.left_behind {
            writeln!(f, "  left behind (could not cancel): {left}")?;
        }
        write!(
            f,
            "{} rules: {held} held, {broken} broken, {skipped} not checked ({:.1} s)",
            self.results.len(),
            self.took.as_secs_f64()
        )?;
        if !self.left_behind.is_empty() {
            write!(f, "; {} holds left behind", self.left_behind.len())?;
        }
        writeln!(f)
    }
}
