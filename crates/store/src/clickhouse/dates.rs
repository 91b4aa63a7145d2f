//! Dates for retention: samples, histograms and spans are partitioned by day (`YYYYMMDD`), and
//! retention drops whole days, since ClickHouse 18.16 has no table TTL.

use super::http::Http;
use crate::query::quote;
use crate::StoreError;

impl Http {
    /// Drops the days of samples and histograms wholly older than `before_ms` (retention: 18.16
    /// has no table TTL). Returns the partitions dropped.
    pub(super) fn drop_days_before(&self, before_ms: i64) -> Result<usize, StoreError> {
        let day = |ms: i64| -> i64 {
            let days = ms.div_euclid(86_400_000);
            let (y, m, d) = civil_from_days(days);
            y * 10_000 + m * 100 + d
        };
        let cutoff = day(before_ms);
        let mut dropped = 0;
        for t in ["samples_local", "histograms_local", "spans_local"] {
            let parts = self.rows(&format!(
                "SELECT DISTINCT partition FROM system.parts WHERE database = {} AND table = '{t}' AND active",
                quote(self.db())
            ))?;
            for p in parts
                .into_iter()
                .filter_map(|r| r.first().cloned().flatten())
            {
                if p.parse::<i64>().is_ok_and(|d| d < cutoff) {
                    self.exec(&format!(
                        "ALTER TABLE {}.{t} {} DROP PARTITION {p}",
                        self.db(),
                        self.on_cluster()
                    ))?;
                    dropped += 1;
                }
            }
        }
        Ok(dropped)
    }
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's civil calendar).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
