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

pub mod protect;

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
        let most = MAX_PERIOD_MONTHS as usize;
        // Counting stops one month past the limit, however long the period asked for.
        if period.months().take(most + 1).count() > most {
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
    /// Safety alerts raised here or received, by kind.
    SafetyAlert(crate::safety::SafetyAlertKind),
    Claim(crate::remedies::ClaimStatus),
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
            Cell::SafetyAlert(_) => "safety_alerts_by_kind",
            Cell::Claim(_) => "claims_by_status",
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

/// Builds a period of several months from the months' published reports only, as reports
/// of several nodes are added together: a cell is the sum of the months' visible cells,
/// suppressed wherever any month's cell is; then [`publish`] again (rare citizenships into
/// `OTHER`, small sums and complements). No difference of two periods can then reveal a
/// suppressed cell of a month: whatever is visible is a sum of visible monthly cells.
pub fn merge_months(months: Vec<Vec<Published>>, min: u64) -> Vec<Published> {
    publish(months.into_iter().flatten().collect(), min)
}

#[cfg(test)]
mod audit_tests;

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
            p.months().take(4).map(Month::key).collect::<Vec<_>>(),
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
    #[test]
    fn months_follow_each_other_across_the_year_and_sort_by_key() {
        let nov = Month::of(date!(2026 - 11 - 30));
        assert_eq!(
            nov,
            Month {
                year: 2026,
                month: 11
            }
        );
        assert_eq!(
            nov.next(),
            Month {
                year: 2026,
                month: 12
            }
        );
        assert_eq!(
            nov.next().next(),
            Month {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(nov.next_first_day(), date!(2026 - 12 - 01));
        assert_eq!(nov.next().next_first_day(), date!(2027 - 01 - 01));
        assert_eq!(
            Month {
                year: 2027,
                month: 1
            }
            .key(),
            "202701"
        );
        assert_eq!(
            Month {
                year: 812,
                month: 3
            }
            .key(),
            "081203"
        );
        // 23:30 on 31 January an hour west of UTC is already February in UTC.
        let t = time::macros::datetime!(2026-01-31 23:30 -01:00);
        assert_eq!(
            Month::at(t),
            Month {
                year: 2026,
                month: 2
            }
        );
    }

    #[test]
    fn a_period_ends_by_this_month_and_covers_at_most_120_months() {
        let today = date!(2026 - 12 - 15);
        // At most one month past the limit is counted: a test must end whatever `next` does.
        let closed = |s, e| {
            Period::closed(s, e, today)
                .map(|p| p.months().take(MAX_PERIOD_MONTHS as usize + 1).count())
        };
        assert_eq!(closed(date!(2026 - 11 - 01), date!(2026 - 12 - 01)), Ok(1));
        assert_eq!(
            closed(date!(2026 - 12 - 01), date!(2027 - 01 - 01))
                .unwrap_err()
                .problem,
            "the period must be closed: end on or before 2026-12-01"
        );
        assert_eq!(
            closed(date!(2016 - 12 - 01), date!(2026 - 12 - 01)),
            Ok(MAX_PERIOD_MONTHS as usize)
        );
        let too_long = closed(date!(2016 - 11 - 01), date!(2026 - 12 - 01)).unwrap_err();
        assert_eq!(
            (too_long.field.as_str(), too_long.problem.as_str()),
            ("period_end", "a report covers at most 120 months")
        );
        assert_eq!(
            closed(date!(2026 - 05 - 01), date!(2026 - 04 - 01))
                .unwrap_err()
                .problem,
            "must be after period_start"
        );
    }

    #[test]
    fn cells_count_in_the_tables_of_their_fixed_names() {
        let tables = [
            (
                Cell::GenderAge {
                    gender: None,
                    age_band: None,
                },
                "victims_by_gender_age",
            ),
            (Cell::Exploitation(None), "victims_by_exploitation"),
            (Cell::Citizenship(None), "victims_by_citizenship"),
            (Cell::Child(None), "children"),
            (
                Cell::Referral {
                    direction: Direction::Incoming,
                    status: ReferralStatus::Sent,
                },
                "referrals_by_direction_status",
            ),
            (Cell::Return(ReturnStatus::Closed), "returns_by_status"),
            (Cell::Hearing(HearingStatus::Held), "hearings_by_status"),
            (
                Cell::SafetyAlert(crate::safety::SafetyAlertKind::Release),
                "safety_alerts_by_kind",
            ),
            (
                Cell::Claim(crate::remedies::ClaimStatus::Paid),
                "claims_by_status",
            ),
        ];
        for (cell, table) in tables {
            assert_eq!(cell.table(), table, "{cell:?}");
        }
        assert_eq!(
            (MIN_CELL_COUNT_FLOOR, DEFAULT_MIN_CELL_COUNT),
            (5, 11),
            "CTDC's threshold by default, never below 5"
        );
    }

    /// A person counts once in each table, and once per distinct value in the tables of
    /// values one may have several of; what the node does not know counts as unspecified.
    #[test]
    fn a_person_counts_once_per_table_and_value() {
        use crate::model::*;
        let (at, ro): (NodeId, NodeId) = ("AT".parse().unwrap(), "RO".parse().unwrap());
        let case = CaseRecord {
            case_id: crate::ids::CaseId::new(),
            person: Person {
                given_name: "A".into(),
                family_name: String::new(),
                date_of_birth: Some(date!(2008 - 06 - 16)),
                gender: Gender::Female,
                citizenship: vec![ro, at, ro],
                languages: vec![],
                document_number: String::new(),
                address: String::new(),
                phone: String::new(),
            },
            needs: Needs::default(),
            exploitation: Exploitation {
                types: vec![ExploitationType::Begging, ExploitationType::Sexual],
                countries: vec![],
            },
            child: ChildInfo {
                is_child: true,
                ..Default::default()
            },
            identified_on: date!(2026 - 06 - 15),
            organisation: "sp1".parse().unwrap(),
            created_at: time::macros::datetime!(2026-06-15 0:00 UTC),
            identifications: vec![],
            residence: None,
        };
        let profile = Profile::of_case(&case);
        assert_eq!(
            profile.cells(),
            [
                Cell::GenderAge {
                    gender: Some(Gender::Female),
                    age_band: Some(AgeBand::B9To17),
                },
                Cell::Exploitation(Some(ExploitationType::Sexual)),
                Cell::Exploitation(Some(ExploitationType::Begging)),
                Cell::Citizenship(Some(at)),
                Cell::Citizenship(Some(ro)),
                Cell::Child(Some(true)),
            ],
            "aged 17 the day identified"
        );
        let disclosed = DisclosedCase {
            age_band: Some(AgeBand::B30To38),
            exploitation: Some(Exploitation {
                types: vec![ExploitationType::Other],
                countries: vec![],
            }),
            child: Some(ChildInfo::default()),
            citizenship: vec![ro],
            ..Default::default()
        };
        assert_eq!(
            Profile::of_disclosed(&disclosed),
            Profile {
                gender: None,
                age_band: Some(AgeBand::B30To38),
                citizenship: vec![ro],
                exploitation: vec![ExploitationType::Other],
                is_child: Some(false),
            }
        );
        let nothing = Profile::of_disclosed(&DisclosedCase::default());
        assert_eq!(nothing, Profile::default());
        assert_eq!(
            nothing.cells(),
            [
                Cell::GenderAge {
                    gender: None,
                    age_band: None,
                },
                Cell::Exploitation(None),
                Cell::Citizenship(None),
                Cell::Child(None),
            ]
        );
    }

    fn counts(out: &[Published], table: &str) -> Vec<(String, u64, bool)> {
        out.iter()
            .filter(|c| c.table == table)
            .map(|c| {
                let labels: Vec<String> =
                    c.labels.iter().map(|(d, v)| format!("{d}={v}")).collect();
                (labels.join(";"), c.count, c.suppressed)
            })
            .collect()
    }

    #[test]
    fn a_cell_of_min_persons_is_published_and_one_fewer_is_not() {
        let out = publish(
            vec![
                cell("t", "a", 6),
                cell("t", "a", 5),
                cell("t", "b", 10),
                cell("t", "c", 10),
                cell("t", "d", 12),
            ],
            11,
        );
        assert_eq!(
            counts(&out, "t"),
            [
                ("v=a".into(), 11, false),
                ("v=b".into(), 0, true),
                ("v=c".into(), 0, true),
                ("v=d".into(), 12, false),
            ],
            "two hidden cells need no complement"
        );
    }

    #[test]
    fn the_complement_is_the_next_smallest_cell_the_first_of_a_tie() {
        let out = publish(
            vec![
                cell("t", "a", 20),
                cell("t", "b", 15),
                cell("t", "c", 15),
                cell("t", "d", 1),
                cell("u", "a", 15),
                cell("u", "b", 30),
            ],
            11,
        );
        assert_eq!(
            counts(&out, "t"),
            [
                ("v=a".into(), 20, false),
                ("v=b".into(), 0, true),
                ("v=c".into(), 15, false),
                ("v=d".into(), 0, true),
            ]
        );
        assert_eq!(
            counts(&out, "u"),
            [("v=a".into(), 15, false), ("v=b".into(), 30, false)],
            "a table with nothing hidden keeps everything"
        );
    }

    #[test]
    fn rare_citizenships_add_up_in_other_which_may_then_be_published() {
        let citizenship = |value: &str, count, suppressed| Published {
            table: CITIZENSHIP_TABLE.into(),
            labels: vec![("citizenship".into(), value.into())],
            count,
            suppressed,
        };
        let out = publish(
            vec![
                citizenship("RO", 30, false),
                citizenship("NG", 6, false),
                citizenship("AT", 5, false),
                citizenship("UA", 11, false),
                citizenship("OTHER", 2, false),
            ],
            11,
        );
        assert_eq!(
            counts(&out, CITIZENSHIP_TABLE),
            [
                ("citizenship=OTHER".into(), 13, false),
                ("citizenship=RO".into(), 30, false),
                ("citizenship=UA".into(), 11, false),
            ]
        );
        // A citizenship hidden in a summed report is folded, and OTHER stays hidden.
        let out = publish(
            vec![
                citizenship("RO", 30, false),
                citizenship("UA", 40, false),
                citizenship("NG", 0, true),
                citizenship("AT", 20, false),
            ],
            11,
        );
        assert_eq!(
            counts(&out, CITIZENSHIP_TABLE),
            [
                ("citizenship=AT".into(), 0, true),
                ("citizenship=OTHER".into(), 0, true),
                ("citizenship=RO".into(), 30, false),
                ("citizenship=UA".into(), 40, false),
            ]
        );
        let unlabelled = Published {
            labels: vec![],
            ..citizenship("", 3, false)
        };
        assert_eq!(
            publish(vec![unlabelled], 11)[0].labels,
            [("citizenship".to_owned(), OTHER.to_owned())]
        );
    }
}
