//! A module version's life, in one place: the stages a version goes
//! through and the only transitions between them. Each transition consumes
//! the stage it leaves, so a stage cannot be left in two ways at once.
//!
//! ```text
//! Loaded ──activate──▶ Active ──retire──▶ Draining ──(last reference)──▶ Unloaded
//!   │                    ▲                    │                     └──▶ Pinned
//!   └──────retire────────┼────────────────────┘ (deadline: forced END once)
//!                        └── activate (a rollback re-activating a kept version)
//! ```

use std::time::Instant;

use super::UnloadReport;

/// Where a module version is in its life.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Loaded: a reload's candidate, or a version loaded outside any
    /// generation (`Runtime::load`).
    Loaded,
    /// In the active generation: new work goes to it.
    Active,
    /// Replaced: its continuations finish, until `deadline`; `forced` once
    /// the deadline passed and the remaining ones were ended.
    Draining {
        /// When its continuations get a forced END.
        deadline: Instant,
        /// Whether that END was sent.
        forced: bool,
    },
    /// Finalised and unmapped; its copy removed.
    Unloaded(UnloadReport),
    /// Finalised, but its library stays mapped (why: in the report).
    Pinned(UnloadReport),
}

impl Stage {
    /// It joins the active generation.
    pub fn activate(self) -> Stage {
        match self {
            Stage::Loaded | Stage::Active | Stage::Draining { .. } => Stage::Active,
            gone => gone,
        }
    }

    /// A generation that does not hold it was published: its continuations
    /// have until `deadline`.
    pub fn retire(self, deadline: Instant) -> Stage {
        match self {
            Stage::Loaded | Stage::Active => Stage::Draining { deadline, forced: false },
            other => other,
        }
    }

    /// Its deadline passed and its continuations were ended.
    pub fn forced(self) -> Stage {
        match self {
            Stage::Draining { deadline, .. } => Stage::Draining { deadline, forced: true },
            other => other,
        }
    }

    /// Its last reference went and it was unloaded.
    pub fn unloaded(self, report: UnloadReport) -> Stage {
        if report.pinned.is_some() { Stage::Pinned(report) } else { Stage::Unloaded(report) }
    }

    /// The unload report, once unloaded or pinned.
    pub fn report(&self) -> Option<&UnloadReport> {
        match self {
            Stage::Unloaded(r) | Stage::Pinned(r) => Some(r),
            _ => None,
        }
    }

    /// Whether its library is still in use (not finalised yet).
    pub fn is_loaded(&self) -> bool {
        self.report().is_none()
    }

    /// Its name in status.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Loaded => "loaded",
            Stage::Active => "active",
            Stage::Draining { .. } => "draining",
            Stage::Unloaded(_) => "unloaded",
            Stage::Pinned(_) => "pinned",
        }
    }

    /// A draining version whose deadline passed at `now` and that was not
    /// forced yet.
    pub fn due(&self, now: Instant) -> bool {
        matches!(self, Stage::Draining { deadline, forced: false } if *deadline <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pinned: bool) -> UnloadReport {
        UnloadReport {
            id: crate::cont::VersionId(1),
            module: "m 1".into(),
            unmapped: !pinned,
            pinned: pinned.then(|| "why".into()),
            copy_removed: !pinned,
            fini_error: None,
            thread: "t".into(),
        }
    }

    #[test]
    fn transitions_go_one_way_and_an_unloaded_version_stays_unloaded() {
        let now = Instant::now();
        let s = Stage::Loaded.activate();
        assert_eq!(s.name(), "active");
        let s = s.retire(now);
        assert!(s.due(now));
        let s = s.forced();
        assert!(!s.due(now), "forced once");
        let s = s.unloaded(report(false));
        assert_eq!(s.name(), "unloaded");
        assert_eq!(s.clone().activate().name(), "unloaded", "no way back from unloaded");
        assert_eq!(s.retire(now).name(), "unloaded");
        assert_eq!(Stage::Active.unloaded(report(true)).name(), "pinned");
        assert_eq!(Stage::Loaded.retire(now).name(), "draining", "a candidate replaced before it served");
    }
}
