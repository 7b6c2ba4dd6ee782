//! The audit trail's writes that stand alone: a refusal recorded outside the transaction it
//! refused (which was rolled back).

use crate::store::{AuditRow, Db};

/// Writes an audit row in its own transaction, logging (not failing) when it cannot.
pub fn audit_alone(db: &mut Db, row: AuditRow) {
    let written = db.write().and_then(|tx| {
        tx.insert_audit(&row)?;
        tx.commit()
    });
    if let Err(e) = written {
        tracing::error!(error = %e, "writing an audit row failed");
    }
}
