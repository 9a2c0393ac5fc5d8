//! A reload as one transaction value (see `docs/reload.md`).
//!
//! [`Reload::begin`] opens the transaction on the calling thread; the
//! candidates it loads ([`Reload::load`]) run their `init` on that thread,
//! and whatever state work their init does is recorded in the transaction:
//! the versions it held for a migration, the migrations it committed, the
//! blocks it created. Then either
//!
//! * [`Reload::publish`] keeps the state changes and hands the holds to a
//!   [`Published`], which the registry releases once the new generation is
//!   live and the old continuations are moved ([`Published::finish`]); or
//! * the transaction is dropped unpublished, and its `Drop` undoes it all:
//!   the user-arg names its candidates reserved last are forgotten, the
//!   blocks they created are forgotten, the migrations are reverted (newest
//!   first, so old code resumes on the old blocks exactly as they were), the
//!   holds are released, and the candidates are finalised and unloaded.
//!
//! A state migration happens only inside an open transaction: the host's
//! hooks ([`ReloadHooks`]) refuse one anywhere else with `MOLT_ERR_PHASE`,
//! and nothing that runs on a worker opens a transaction or waits for all
//! workers. The registry reaches the workers only through [`Workers`], and
//! the runtime only through [`ReloadHost`].

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use molt_abi::ffi::*;

use super::registry::Registry;
use super::{Holders, LoadError, ModuleMeta, ModuleSpec, UnloadReport, VersionId, VersionRef};
use crate::host::Host;
use crate::sync::Arc;
use crate::sys::files::Taken;

/// What the registry asks of the workers, all from the control side (each
/// call runs between events on every worker and waits for all of them).
pub trait Workers: Send + Sync {
    /// Hold the events of `versions` (a state migration is coming).
    fn hold(&self, versions: &[VersionId]);
    /// Release every hold; the number of events that waited.
    fn unhold(&self) -> usize;
    /// Move `from`'s continuations to `to` through its adopt: (adopted, refused).
    fn upgrade(&self, from: VersionId, to: &VersionRef) -> (usize, usize);
    /// Move `from`'s never-run, host-made continuations to `to`.
    fn rebase_unstarted(&self, from: VersionId, to: &VersionRef) -> usize;
    /// Send DRAIN to `version`'s continuations; how many there are.
    fn drain(&self, version: VersionId, deadline: Duration) -> usize;
    /// End `version`'s continuations (forced END); how many.
    fn end(&self, version: VersionId) -> usize;
}

/// What the runtime knows of a version it loaded.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// The version.
    pub meta: ModuleMeta,
    /// What holds it (shared with the version).
    pub holders: Arc<Holders>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Where it is in its life.
    pub stage: super::Stage,
}

impl VersionRecord {
    /// Whether it is still loaded (not finalised yet).
    pub fn is_loaded(&self) -> bool {
        self.stage.is_loaded()
    }

    /// How its unload went, once it was unloaded (or found pinned).
    pub fn unloaded(&self) -> Option<&UnloadReport> {
        self.stage.report()
    }

    /// Continuations it owns now.
    pub fn continuations(&self) -> usize {
        self.holders.conts()
    }
}

/// What the registry needs of the runtime: a narrow handle.
pub trait ReloadHost: Send + Sync {
    /// The workers.
    fn all_workers(&self) -> &dyn Workers;
    /// Load a version from bytes taken in (its init runs on this thread).
    fn load_version(&self, spec: &ModuleSpec, taken: Taken) -> Result<VersionRef, LoadError>;
    /// Every version record (loaded ones and recent unloads).
    fn version_records(&self) -> Vec<VersionRecord>;
    /// The host services (state region, user args).
    fn host(&self) -> &Host;
    /// The registry.
    fn registry(&self) -> &Registry;
    /// Unload the versions whose last reference went.
    fn reap(&self);
    /// The draining versions whose deadline passed at `now` and that were
    /// not forced yet (read under the records' lock, nothing cloned: the
    /// ticker asks every 20 ms).
    fn due(&self, now: std::time::Instant) -> Vec<VersionId>;
    /// Move version `id` to its next stage (see [`super::Stage`]).
    fn set_stage(&self, id: VersionId, to: &mut dyn FnMut(super::Stage) -> super::Stage);
}

/// The state work of an open transaction, recorded by the host's hooks.
#[derive(Default)]
struct Journal {
    /// Versions whose events are held on every worker.
    held: Vec<VersionId>,
    /// Migrations committed, in order: (module, src, dst).
    migrations: Vec<(String, u64, u64)>,
    /// Blocks created: (module, by, handle).
    created: Vec<(String, VersionId, u64)>,
}

thread_local! {
    /// The transaction open on this thread, if any.
    static OPEN: RefCell<Option<Rc<RefCell<Journal>>>> = const { RefCell::new(None) };
}

/// Record into the transaction open on this thread; `None` when none is.
fn with_open<R>(f: impl FnOnce(&mut Journal) -> R) -> Option<R> {
    OPEN.with(|o| o.borrow().as_ref().map(|j| f(&mut j.borrow_mut())))
}

/// One reload: begin, load candidates, then publish or drop.
#[must_use = "an unpublished reload is undone when dropped"]
pub struct Reload<'h> {
    host: &'h dyn ReloadHost,
    /// Every version this transaction loads has an id from here on.
    candidates_from: VersionId,
    journal: Rc<RefCell<Journal>>,
    /// The journal open on this thread before this one (none, normally).
    outer: Option<Rc<RefCell<Journal>>>,
    done: bool,
}

impl<'h> Reload<'h> {
    /// Open a transaction on this thread.
    pub fn begin(host: &'h dyn ReloadHost) -> Reload<'h> {
        let journal = Rc::new(RefCell::new(Journal::default()));
        let outer = OPEN.with(|o| o.borrow_mut().replace(journal.clone()));
        Reload { host, candidates_from: super::next_version_id(), journal, outer, done: false }
    }

    /// Load a candidate (its init's state work joins this transaction).
    pub fn load(&mut self, spec: &ModuleSpec, taken: Taken) -> Result<VersionRef, LoadError> {
        self.host.load_version(spec, taken)
    }

    /// Keep the state changes. The holds go to the returned [`Published`],
    /// to be released once the new generation is live.
    pub fn publish(mut self) -> Published<'h> {
        self.close();
        let j = std::mem::take(&mut *self.journal.borrow_mut());
        self.done = true;
        let mut migrated: Vec<String> = j.migrations.into_iter().map(|(m, _, _)| m).collect();
        migrated.sort_unstable();
        migrated.dedup();
        Published { host: self.host, held: j.held, migrated }
    }

    fn close(&mut self) {
        let outer = self.outer.take();
        OPEN.with(|o| *o.borrow_mut() = outer);
    }

    /// Undo everything (see the module docs).
    fn revert(&mut self) {
        let j = std::mem::take(&mut *self.journal.borrow_mut());
        let host = self.host.host();
        let from = self.candidates_from;
        let forgotten = host.user_args.forget_newest(|by| by >= from);
        if !forgotten.is_empty() {
            tracing::info!(names = ?forgotten, "reload refused: user-arg names its candidates reserved are forgotten");
        }
        for (module, _, handle) in j.created {
            match host.state.abort_migration(handle) {
                Ok(()) => {
                    tracing::info!(module = %module, "reload refused: the block its candidate created is forgotten")
                }
                Err((_, e)) => tracing::error!(module = %module, "forgetting a refused candidate's block failed: {e}"),
            }
        }
        for (module, src, dst) in j.migrations.into_iter().rev() {
            match host.state.revert_migration(src, dst) {
                Ok(()) => {
                    tracing::warn!(module = %module, "reload refused: state migration reverted, the old block is live again")
                }
                Err((_, e)) => tracing::error!(module = %module, "reverting a state migration failed: {e}"),
            }
        }
        release(self.host, &j.held);
    }
}

impl Drop for Reload<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.close();
        self.revert();
        // The candidates were dropped by the caller before this: unload them.
        self.host.reap();
    }
}

/// Release the holds `held` on every worker: held events run, on whatever
/// version their continuation has now.
fn release(host: &dyn ReloadHost, held: &[VersionId]) {
    if held.is_empty() {
        return;
    }
    let n = host.all_workers().unhold();
    tracing::info!(events = n, "state migration done: held events released");
}

/// A published reload whose holds are still taken.
#[must_use = "the holds are released by finish (or on drop)"]
pub struct Published<'h> {
    host: &'h dyn ReloadHost,
    held: Vec<VersionId>,
    /// Modules whose state was migrated (their old continuations must move).
    pub migrated: Vec<String>,
}

impl Published<'_> {
    /// Release the holds.
    pub fn finish(self) {}
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        release(self.host, &std::mem::take(&mut self.held));
    }
}

/// The runtime's side of state migrations, as the host calls it from a
/// module's `state_open` (see [`crate::host::StateHooks`]): it records into
/// the transaction open on the calling thread, and refuses a migration
/// when none is.
pub struct ReloadHooks(pub std::sync::Weak<dyn ReloadHost>);

fn not_in_a_reload(module: &str) -> (molt_status, String) {
    (
        MOLT_ERR_PHASE,
        format!(
            "a state migration of module {module} happens only during a reload (or a first load): open the block in init, and change its schema with a reload"
        ),
    )
}

impl crate::host::StateHooks for ReloadHooks {
    fn quiesce(&self, module: &str, caller: VersionId, caller_adopts: bool) -> Result<(), (molt_status, String)> {
        let host = self.0.upgrade().ok_or((MOLT_ERR_SHUTDOWN, "the runtime is stopping".to_owned()))?;
        if with_open(|_| ()).is_none() {
            return Err(not_in_a_reload(module));
        }
        let ids: Vec<VersionId> = host
            .version_records()
            .iter()
            .filter(|r| r.is_loaded() && r.meta.name == module && r.meta.id != caller)
            .map(|r| r.meta.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        // Hold first, count after: once every worker holds them, a
        // continuation of these versions created later never runs (its
        // events wait), so the count below is final for code that ran; those
        // created later are moved to the new version at publish.
        host.all_workers().hold(&ids);
        with_open(|j| j.held.extend(ids.iter().copied()));
        tracing::info!(module, versions = ?ids, "module quiesced for a state migration: its events are held");
        let live: usize =
            host.version_records().iter().filter(|r| ids.contains(&r.meta.id)).map(VersionRecord::continuations).sum();
        if live > 0 && !caller_adopts {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "changing module {module}'s state schema with {live} live continuations of its older versions needs an adopt callback in the new version (they must move to it: old code may not touch migrated state); this version has none"
                ),
            ));
        }
        Ok(())
    }

    fn migrate_down(&self, module: &str, m: &molt_migration) -> Result<(), (molt_status, String)> {
        let host = self.0.upgrade().ok_or((MOLT_ERR_SHUTDOWN, "the runtime is stopping".to_owned()))?;
        let newer = host.registry().active().and_then(|g| g.get(module).cloned());
        let Some(v) = newer.filter(|v| v.meta().state_schema == m.from_schema) else {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "no loaded version of {module} speaks schema {} to migrate it down to {}: the block was written by a newer version (a downgrade that did not finish, or a rollback across a restart). Configure a version of {module} that speaks schema {} (it can then be rolled back with its down-migration), or discard the state with --reset-state",
                    m.from_schema, m.to_schema, m.from_schema
                ),
            ));
        };
        if v.meta().module_caps & MOLT_MOD_CAP_MIGRATE_DOWN == 0 || v.meta().callbacks.migrate.is_none() {
            return Err((
                MOLT_ERR_SCHEMA,
                format!(
                    "going back from schema {} to {} needs {} {}'s down-migration, and it does not offer one (MOLT_MOD_CAP_MIGRATE_DOWN)",
                    m.from_schema,
                    m.to_schema,
                    module,
                    v.meta().version
                ),
            ));
        }
        v.migrate(m).map_err(|e| (e.status, e.to_string()))
    }

    fn migrated(&self, module: &str, src: u64, dst: u64) {
        if with_open(|j| j.migrations.push((module.to_owned(), src, dst))).is_none() {
            tracing::error!(module, "a migration was committed outside a reload");
        }
    }

    fn created(&self, module: &str, by: VersionId, handle: u64) {
        // Outside a transaction (a block opened lazily on a worker) the
        // block is simply kept: there is nothing to undo.
        let _ = with_open(|j| j.created.push((module.to_owned(), by, handle)));
    }
}
