//! Statistics cells in the wire's terms: each domain [`Cell`] becomes a table name and
//! labels whose values are proto enum names (`GENDER_FEMALE`), ISO country codes or
//! `true`/`false`; a value the node does not hold is the enum's `*_UNSPECIFIED` name.

use trm_core::{
    referral::Direction,
    stats::{Cell, Published},
};

use crate::{
    convert::{hearing_status_to_wire, referral_status_to_wire, return_status_to_wire, WireEnum},
    v1 as w,
};

fn enum_name<T, W>(v: Option<T>, name: impl Fn(W) -> &'static str) -> String
where
    T: WireEnum,
    W: TryFrom<i32> + Default,
{
    let wire = v.map_or(0, WireEnum::to_wire);
    name(W::try_from(wire).unwrap_or_default()).to_owned()
}

fn label(dimension: &str, value: impl Into<String>) -> (String, String) {
    (dimension.to_owned(), value.into())
}

/// Returns the raw (not yet suppressed) published form of `cell` with `count`.
pub fn published(cell: &Cell, count: u64) -> Published {
    let labels = match cell {
        Cell::GenderAge { gender, age_band } => vec![
            label("gender", enum_name(*gender, |g: w::Gender| g.as_str_name())),
            label(
                "age_band",
                enum_name(*age_band, |a: w::AgeBand| a.as_str_name()),
            ),
        ],
        Cell::Exploitation(t) => vec![label(
            "exploitation_type",
            enum_name(*t, |e: w::ExploitationType| e.as_str_name()),
        )],
        Cell::Citizenship(c) => vec![label(
            "citizenship",
            c.map_or_else(|| "UNSPECIFIED".to_owned(), |c| c.to_string()),
        )],
        Cell::Child(is_child) => vec![label(
            "is_child",
            is_child.map_or("UNSPECIFIED", |c| if c { "true" } else { "false" }),
        )],
        Cell::Referral { direction, status } => vec![
            label(
                "direction",
                match direction {
                    Direction::Incoming => w::Direction::Incoming,
                    Direction::Outgoing => w::Direction::Outgoing,
                }
                .as_str_name(),
            ),
            label("status", referral_status_to_wire(*status).as_str_name()),
        ],
        Cell::Return(s) => vec![label(
            "status",
            w::ReturnStatus::try_from(return_status_to_wire(*s))
                .unwrap_or_default()
                .as_str_name(),
        )],
        Cell::Hearing(s) => vec![label(
            "status",
            w::HearingStatus::try_from(hearing_status_to_wire(*s))
                .unwrap_or_default()
                .as_str_name(),
        )],
        Cell::SafetyAlert(k) => vec![label(
            "kind",
            enum_name(Some(*k), |k: w::SafetyAlertKind| k.as_str_name()),
        )],
        Cell::Claim(s) => vec![label(
            "status",
            w::ClaimStatus::try_from(s.to_wire())
                .unwrap_or_default()
                .as_str_name(),
        )],
    };
    Published {
        table: cell.table().to_owned(),
        labels,
        count,
        suppressed: false,
    }
}

/// Returns the wire form of a published cell.
pub fn cell_to_wire(c: &Published) -> w::StatisticCell {
    w::StatisticCell {
        table: c.table.clone(),
        labels: c
            .labels
            .iter()
            .map(|(dimension, value)| w::StatisticLabel {
                dimension: dimension.clone(),
                value: value.clone(),
            })
            .collect(),
        count: c.count,
        suppressed: c.suppressed,
    }
}

/// Returns the published form of a wire cell (to add reports together).
pub fn cell_from_wire(c: &w::StatisticCell) -> Published {
    Published {
        table: c.table.clone(),
        labels: c
            .labels
            .iter()
            .map(|l| (l.dimension.clone(), l.value.clone()))
            .collect(),
        count: c.count,
        suppressed: c.suppressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alerts publish in their own table, labelled by the proto enum name of their kind.
    #[test]
    fn a_safety_alert_cell_is_published_by_kind() {
        let p = published(
            &Cell::SafetyAlert(trm_core::safety::SafetyAlertKind::Release),
            12,
        );
        assert_eq!(p.table, "safety_alerts_by_kind");
        assert_eq!(
            p.labels,
            [("kind".to_owned(), "SAFETY_ALERT_KIND_RELEASE".to_owned())]
        );
        assert_eq!(p.count, 12);
    }
}
