//! Monitoring and evaluation statistics that expose no one (DOMAIN principle 7, the source
//! paper §38; anchored on the Counter Trafficking Data Collaborative, which publishes counts
//! by gender, age band, citizenship and exploitation type and hides every figure below 11).
//!
//! What is counted ([`Cell`]): persons (cases) by the fixed tables of DESIGN.md, in the month
//! a case was identified here or first arrived from a peer; referrals, return plans and
//! hearings by their current state, in the month each was created. The node keeps one counter
//! per month and cell, updated in the transaction that changes the record, so an export
//! decrypts nothing. What is published ([`publish`]): whole closed months only; rare
//! citizenships folded into `OTHER`; every cell below `min_cell_count` suppressed, and a
//! second one wherever a table would hold exactly one suppressed cell.

use serde::{Deserialize, Serialize};
use time::{Date, Month as CalendarMonth, OffsetDateTime};

use crate::{
    error::FieldError,
    hearing::HearingStatus,
    ids::NodeId,
    model::{AgeBand, CaseRecord, DisclosedCase, ExploitationType, Gender},
    referral::{Direction, ReferralStatus},
    returns::ReturnStatus,
};

/// The lowest `min_cell_count` a node may be configured with.
pub const MIN_CELL_COUNT_FLOOR: u64 = 5;
/// CTDC's threshold, the default.
pub const DEFAULT_MIN_CELL_COUNT: u64 = 11;
/// The longest period one report may cover.
pub const MAX_PERIOD_MONTHS: u32 = 120;
/// The citizenship value rare citizenships are folded into.
pub const OTHER: &str = "OTHER";
/// The table of citizenships (folded before suppression).
pub const CITIZENSHIP_TABLE: &str = "victims_by_citizenship";

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Month {
    pub year: i32,
    pub month: u8,
}

impl Month {
    /// Returns the month of `d`.
    pub fn of(d: Date) -> Self {
        Self {
            year: d.year(),
            month: d.month() as u8,
        }
    }

    /// Returns the month of the instant `t` (UTC).
    pub fn at(t: OffsetDateTime) -> Self {
        Self::of(t.to_offset(time::UtcOffset::UTC).date())
    }

    /// Returns the following month.
    pub fn next(self) -> Self {
        if self.month >= 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Returns the first day of the following month.
    pub fn next_first_day(self) -> Date {
        let n = self.next();
        CalendarMonth::try_from(n.month)
            .ok()
            .and_then(|m| Date::from_calendar_date(n.year, m, 1).ok())
            .unwrap_or(Date::MAX)
    }

    /// Returns the month as `YYYYMM`, which sorts in time order.
    pub fn key(self) -> String {
        format!("{:04}{:02}", self.year, self.month)
    }
}

/// The months of a closed period: from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: Date,
    pub end: Date,
}

impl Period {
    /// Checks a requested period: whole calendar months (each bound the 1st of a month,
    /// the end after the start) and closed (ending on or before the 1st of the month of
    /// `today`). Fixed periods stop differencing attacks between overlapping exports.
    pub fn closed(start: Date, end: Date, today: Date) -> Result<Self, FieldError> {
        if start.day() != 1 {
            return Err(FieldError::new(
                "period_start",
                "must be the first day of a month",
            ));
        }
        if end.day() != 1 {
            return Err(FieldError::new(
                "period_end",
                "must be the first day of a month",
            ));
        }
        if end <= start {
            return Err(FieldError::new("period_end", "must be after period_start"));
        }
        let this_month = today.replace_day(1).unwrap_or(today);
        if end > this_month {
            return Err(FieldError::new(
                "period_end",
                format!("the period must be closed: end on or before {this_month}"),
            ));
        }
        let period = Self { start, end };
        if period.months().count() > MAX_PERIOD_MONTHS as usize {
            return Err(FieldError::new(
                "period_end",
                format!("a report covers at most {MAX_PERIOD_MONTHS} months"),
            ));
        }
        Ok(period)
    }

    /// Returns the months of the period, in order.
    pub fn months(self) -> impl Iterator<Item = Month> {
        let end = Month::of(self.end);
        std::iter::successors(Some(Month::of(self.start)), |m| Some(m.next()))
            .take_while(move |m| *m < end)
    }
}

/// One counter: a cell of one of the fixed tables. `None` stands for a value the node does
/// not hold (published as the enum's `UNSPECIFIED` name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Cell {
    GenderAge {
        gender: Option<Gender>,
        age_band: Option<AgeBand>,
    },
    Exploitation(Option<ExploitationType>),
    Citizenship(Option<NodeId>),
    Child(Option<bool>),
    Referral {
        direction: Direction,
        status: ReferralStatus,
    },
    Return(ReturnStatus),
    Hearing(HearingStatus),
}

impl Cell {
    /// Returns the name of the cell's table.
    pub fn table(&self) -> &'static str {
        match self {
            Cell::GenderAge { .. } => "victims_by_gender_age",
            Cell::Exploitation(_) => "victims_by_exploitation",
            Cell::Citizenship(_) => CITIZENSHIP_TABLE,
            Cell::Child(_) => "children",
            Cell::Referral { .. } => "referrals_by_direction_status",
            Cell::Return(_) => "returns_by_status",
            Cell::Hearing(_) => "hearings_by_status",
        }
    }
}

/// What the victim tables count of one person.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub gender: Option<Gender>,
    pub age_band: Option<AgeBand>,
    pub citizenship: Vec<NodeId>,
    pub exploitation: Vec<ExploitationType>,
    pub is_child: Option<bool>,
}

impl Profile {
    /// The profile of a case of this node, its age as of the day it was identified.
    pub fn of_case(c: &CaseRecord) -> Self {
        Self {
            gender: Some(c.person.gender),
            age_band: c
                .person
                .date_of_birth
                .map(|born| AgeBand::of(born, c.identified_on)),
            citizenship: c.person.citizenship.clone(),
            exploitation: c.exploitation.types.clone(),
            is_child: Some(c.child.is_child),
        }
    }

    /// The profile of a case received from a peer: what was disclosed, nothing more.
    pub fn of_disclosed(d: &DisclosedCase) -> Self {
        Self {
            gender: d.gender,
            age_band: d.age_band,
            citizenship: d.citizenship.clone(),
            exploitation: d
                .exploitation
                .as_ref()
                .map(|e| e.types.clone())
                .unwrap_or_default(),
            is_child: d.child.map(|c| c.is_child),
        }
    }

    /// Returns the cells the person counts in: once per table, and once per value in the
    /// tables of values a person may have several of (citizenships, exploitation types).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = vec![Cell::GenderAge {
            gender: self.gender,
            age_band: self.age_band,
        }];
        let mut kinds: Vec<Option<ExploitationType>> =
            self.exploitation.iter().map(|e| Some(*e)).collect();
        kinds.sort();
        kinds.dedup();
        if kinds.is_empty() {
            kinds.push(None);
        }
        cells.extend(kinds.into_iter().map(Cell::Exploitation));
        let mut countries: Vec<Option<NodeId>> =
            self.citizenship.iter().map(|c| Some(*c)).collect();
        countries.sort();
        countries.dedup();
        if countries.is_empty() {
            countries.push(None);
        }
        cells.extend(countries.into_iter().map(Cell::Citizenship));
        cells.push(Cell::Child(self.is_child));
        cells
    }
}

/// One published cell, in the wire's terms: the table, the labels (dimension, value), the
/// count (0 when suppressed) and whether it is suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub table: String,
    pub labels: Vec<(String, String)>,
    pub count: u64,
    pub suppressed: bool,
}

/// A published cell's table and labels.
type CellKey = (String, Vec<(String, String)>);

/// Applies the disclosure rules to raw cells (or to sums of published reports, whose
/// suppressed cells stay suppressed): cells with the same table and labels are added up;
/// citizenships held by fewer than `min` persons (or unknown, from a suppressed input) are
/// folded into `OTHER`; zero cells are omitted; every cell below `min` is suppressed; where
/// a table would then hold exactly one suppressed cell its next smallest is suppressed too;
/// a suppressed cell is published with count 0.
pub fn publish(cells: Vec<Published>, min: u64) -> Vec<Published> {
    let mut sums: std::collections::BTreeMap<CellKey, (u64, bool)> = Default::default();
    for c in cells {
        let e = sums.entry((c.table, c.labels)).or_default();
        e.0 += c.count;
        e.1 |= c.suppressed;
    }
    // Rare citizenships go into OTHER before anything is suppressed.
    let rare: Vec<_> = sums
        .iter()
        .filter(|((table, labels), (count, suppressed))| {
            table == CITIZENSHIP_TABLE
                && labels.iter().all(|(_, v)| v != OTHER)
                && (*suppressed || *count < min)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in rare {
        if let Some((count, suppressed)) = sums.remove(&key) {
            let dimension = key
                .1
                .first()
                .map_or_else(|| "citizenship".to_owned(), |(d, _)| d.clone());
            let other = sums
                .entry((key.0, vec![(dimension, OTHER.to_owned())]))
                .or_default();
            other.0 += count;
            other.1 |= suppressed;
        }
    }
    let mut out: Vec<Published> = sums
        .into_iter()
        .filter(|(_, (count, suppressed))| *count > 0 || *suppressed)
        .map(|((table, labels), (count, suppressed))| Published {
            table,
            labels,
            count,
            suppressed: suppressed || count < min,
        })
        .collect();
    // Complementary suppression, table by table.
    let mut tables: Vec<String> = out.iter().map(|c| c.table.clone()).collect();
    tables.dedup();
    for table in tables {
        let in_table = |c: &&mut Published| c.table == table;
        if out
            .iter_mut()
            .filter(in_table)
            .filter(|c| c.suppressed)
            .count()
            == 1
        {
            if let Some(next) = out
                .iter_mut()
                .filter(in_table)
                .filter(|c| !c.suppressed)
                .min_by(|a, b| (a.count, &a.labels).cmp(&(b.count, &b.labels)))
            {
                next.suppressed = true;
            }
        }
    }
    for c in &mut out {
        if c.suppressed {
            c.count = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn cell(table: &str, value: &str, count: u64) -> Published {
        Published {
            table: table.into(),
            labels: vec![("v".into(), value.into())],
            count,
            suppressed: false,
        }
    }

    #[test]
    fn only_closed_whole_months_are_a_period() {
        let today = date!(2026 - 12 - 01);
        assert!(Period::closed(date!(2026 - 01 - 01), date!(2026 - 04 - 01), today).is_ok());
        let field = |s, e| Period::closed(s, e, today).map(|_| ()).map_err(|e| e.field);
        assert_eq!(
            field(date!(2026 - 01 - 02), date!(2026 - 04 - 01)),
            Err("period_start".into())
        );
        assert_eq!(
            field(date!(2026 - 01 - 01), date!(2026 - 03 - 31)),
            Err("period_end".into())
        );
        assert_eq!(
            field(date!(2026 - 11 - 01), date!(2027 - 01 - 01)),
            Err("period_end".into()),
            "partly in the future"
        );
        assert_eq!(
            field(date!(2026 - 04 - 01), date!(2026 - 04 - 01)),
            Err("period_end".into())
        );
        let p = Period::closed(date!(2025 - 11 - 01), date!(2026 - 02 - 01), today).unwrap();
        assert_eq!(
            p.months().map(Month::key).collect::<Vec<_>>(),
            vec!["202511", "202512", "202601"]
        );
    }

    #[test]
    fn small_cells_and_their_complement_are_hidden_and_rare_citizenships_folded() {
        let out = publish(
            vec![
                cell("t", "a", 40),
                cell("t", "b", 20),
                cell("t", "c", 3),
                cell("t", "d", 0),
                cell(CITIZENSHIP_TABLE, "RO", 30),
                cell(CITIZENSHIP_TABLE, "NG", 2),
                cell(CITIZENSHIP_TABLE, "AT", 1),
            ],
            11,
        );
        let get = |t: &str, v: &str| {
            out.iter()
                .find(|c| c.table == t && c.labels[0].1 == v)
                .map(|c| (c.count, c.suppressed))
        };
        assert_eq!(get("t", "a"), Some((40, false)));
        assert_eq!(get("t", "c"), Some((0, true)));
        assert_eq!(get("t", "b"), Some((0, true)), "the complement of c");
        assert_eq!(get("t", "d"), None, "zero cells are omitted");
        assert_eq!(get(CITIZENSHIP_TABLE, "NG"), None, "folded");
        assert_eq!(get(CITIZENSHIP_TABLE, "OTHER"), Some((0, true)));
        assert_eq!(
            get(CITIZENSHIP_TABLE, "RO"),
            Some((0, true)),
            "the complement"
        );
        for table in ["t", CITIZENSHIP_TABLE] {
            let hidden = out
                .iter()
                .filter(|c| c.table == table && c.suppressed)
                .count();
            assert_ne!(hidden, 1, "{table}");
        }
    }

    #[test]
    fn a_cell_suppressed_in_any_input_stays_suppressed_in_a_sum() {
        let mut hidden = cell("t", "a", 0);
        hidden.suppressed = true;
        let out = publish(
            vec![
                hidden,
                cell("t", "a", 30),
                cell("t", "b", 50),
                cell("t", "c", 60),
            ],
            11,
        );
        assert!(out.iter().any(|c| c.labels[0].1 == "a" && c.suppressed));
        assert_eq!(out.iter().filter(|c| c.suppressed).count(), 2);
    }
}
