//! The schema's versions, for every engine: the current version, and one list of steps, each
//! step giving its SQL for each engine. An engine's schema (`sqlite/schema.rs`,
//! `postgres/schema.rs`) is the current shape; `open` runs, in one transaction, the steps from
//! the version a store has to [`SCHEMA_VERSION`]. A new version adds one [`Step`] here, with
//! its text for every engine, and changes each engine's current schema to match.

use super::sqlite::schema as lite;

/// The version of the store's schema: SQLite keeps it in `PRAGMA user_version`, PostgreSQL in
/// the table `schema_version`.
pub(super) const SCHEMA_VERSION: i64 = 6;

/// One step, from version `from` to `from + 1`.
pub(super) struct Step {
    pub(super) from: i64,
    pub(super) sqlite: &'static str,
    /// `None` before the PostgreSQL schema existed (it was first made at version 6,
    /// `postgres/schema.rs`).
    pub(super) postgres: Option<&'static str>,
}

/// Every step, in order.
pub(super) const STEPS: &[Step] = &[
    Step {
        from: 1,
        sqlite: lite::MIGRATE_1_TO_2,
        postgres: None,
    },
    Step {
        from: 2,
        sqlite: lite::MIGRATE_2_TO_3,
        postgres: None,
    },
    Step {
        from: 3,
        sqlite: lite::MIGRATE_3_TO_4,
        postgres: None,
    },
    Step {
        from: 4,
        sqlite: lite::MIGRATE_4_TO_5,
        postgres: None,
    },
    Step {
        from: 5,
        sqlite: lite::MIGRATE_5_TO_6,
        postgres: None,
    },
];

/// The step from version `v`, if there is one.
pub(super) fn step_from(v: i64) -> Option<&'static Step> {
    STEPS.iter().find(|s| s.from == v)
}

#[cfg(test)]
mod tests {
    use super::super::postgres::schema as pg;
    use super::*;

    #[test]
    fn the_steps_lead_to_the_current_version_and_postgres_has_each_of_its_own() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.from, i as i64 + 1, "steps are in order, one per version");
            assert_eq!(
                s.postgres.is_some(),
                s.from >= pg::FIRST_VERSION,
                "step from {}: PostgreSQL's text is given from its first version on",
                s.from
            );
        }
        assert_eq!(STEPS.len() as i64 + 1, SCHEMA_VERSION);
    }
}
