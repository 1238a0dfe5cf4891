//! The Procfile: one `name: command` per line, as on Heroku. Special names: `release` (run once
//! before a release goes live) and `build` (run once per upload, in the build directory). An
//! entry whose command starts with five cron fields runs on that schedule instead of all day:
//! `cron-report: */15 * * * * python3 report.py`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Procfile {
    /// Long-running process types (`web`, `worker`, ...), by name.
    pub processes: BTreeMap<String, String>,
    /// Scheduled commands, by name.
    pub scheduled: BTreeMap<String, Scheduled>,
    pub release: Option<String>,
    pub build: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub schedule: Schedule,
    /// The five cron fields as written, for display.
    pub spec: String,
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Procfile line {line}: {reason}")]
pub struct ProcfileError {
    pub line: usize,
    pub reason: String,
}

impl Procfile {
    pub fn parse(text: &str) -> Result<Self, ProcfileError> {
        let mut procfile = Procfile {
            processes: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            release: None,
            build: None,
        };
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |reason: String| ProcfileError { line, reason };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(error("expected `name: command`".into()));
            };
            let (name, command) = (name.trim(), command.trim());
            let valid_name = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                return Err(error(format!(
                    "{name:?} is not a process name (lowercase letters, digits, - and _)"
                )));
            }
            if command.is_empty() {
                return Err(error(format!("{name} has no command")));
            }
            let taken = procfile.processes.contains_key(name)
                || procfile.scheduled.contains_key(name)
                || (name == "release" && procfile.release.is_some())
                || (name == "build" && procfile.build.is_some());
            if taken {
                return Err(error(format!("{name} is defined twice")));
            }
            match name {
                "release" => procfile.release = Some(command.to_owned()),
                "build" => procfile.build = Some(command.to_owned()),
                _ => match split_schedule(command) {
                    Some((spec, rest)) => {
                        let schedule = Schedule::parse(&spec)
                            .map_err(|reason| error(format!("{name}: {reason}")))?;
                        if rest.is_empty() {
                            return Err(error(format!("{name} has a schedule but no command")));
                        }
                        procfile.scheduled.insert(
                            name.to_owned(),
                            Scheduled {
                                schedule,
                                spec,
                                command: rest.to_owned(),
                            },
                        );
                    }
                    None => {
                        procfile
                            .processes
                            .insert(name.to_owned(), command.to_owned());
                    }
                },
            }
        }
        if procfile.processes.is_empty() && procfile.scheduled.is_empty() {
            return Err(ProcfileError {
                line: 0,
                reason: "no process types (add e.g. `web: python3 app.py`)".into(),
            });
        }
        Ok(procfile)
    }
}

/// Splits `*/15 * * * * cmd args` into the five cron fields and the command, when the first
/// five words look like cron fields.
fn split_schedule(command: &str) -> Option<(String, &str)> {
    let mut rest = command;
    let mut fields = Vec::new();
    for _ in 0..5 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.is_empty()
            || !word
                .chars()
                .all(|c| c.is_ascii_digit() || "*/,-".contains(c))
        {
            return None;
        }
        fields.push(word);
        rest = &rest[end..];
    }
    Some((fields.join(" "), rest.trim()))
}

/// A five-field cron schedule (minute, hour, day of month, month, day of week), each field a
/// set of allowed values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub minutes: u64,
    pub hours: u32,
    pub days: u32,
    pub months: u16,
    pub weekdays: u8,
    /// Both day fields restricted: either may match (cron's rule).
    day_or: bool,
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!("{spec:?} needs five cron fields"));
        };
        let minutes = field(minute, 0, 59, "minute")?;
        let hours = field(hour, 0, 23, "hour")? as u32;
        let days = field(day, 1, 31, "day of month")? as u32;
        let months = field(month, 1, 12, "month")? as u16;
        // 0 and 7 are both Sunday.
        let mut weekdays = field(weekday, 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays: (weekdays & 0x7f) as u8,
            day_or: *day != "*" && *weekday != "*",
        })
    }

    /// Whether the schedule fires at this minute (all in UTC).
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let day_ok = self.days & (1 << day) != 0;
        let weekday_ok = self.weekdays & (1 << weekday) != 0;
        let days = if self.day_or {
            day_ok || weekday_ok
        } else {
            day_ok && weekday_ok
        };
        self.minutes & (1 << minute) != 0
            && self.hours & (1 << hour) != 0
            && self.months & (1 << month) != 0
            && days
    }
}

impl Schedule {
    /// The first minute strictly after `after` (Unix seconds, UTC) at which the schedule fires,
    /// within the next 366 days.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let mut minute = after.div_euclid(60) * 60 + 60;
        let limit = minute + 366 * 24 * 3600;
        while minute <= limit {
            let t = time::OffsetDateTime::from_unix_timestamp(minute).ok()?;
            // Skip whole hours and days that cannot match, to keep this cheap.
            if self.months & (1 << u8::from(t.month())) == 0 || !self.day_matches(&t) {
                minute = (minute.div_euclid(86_400) + 1) * 86_400;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                minute = (minute.div_euclid(3600) + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << t.minute()) != 0 {
                return Some(minute);
            }
            minute += 60;
        }
        None
    }

    fn day_matches(&self, t: &time::OffsetDateTime) -> bool {
        let day_ok = self.days & (1 << t.day()) != 0;
        let weekday_ok = self.weekdays & (1 << t.weekday().number_days_from_sunday()) != 0;
        if self.day_or {
            day_ok || weekday_ok
        } else {
            day_ok && weekday_ok
        }
    }
}

/// One cron field as a bit set over `min..=max`.
fn field(text: &str, min: u32, max: u32, what: &str) -> Result<u64, String> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in {what} field {text:?}"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, what, text)?, number(b, what, text)?)
        } else {
            let value = number(range, what, text)?;
            // `5/10` means from 5 to the end in steps of 10.
            (value, if part.contains('/') { max } else { value })
        };
        if low < min || high > max || low > high {
            return Err(format!("{what} field {text:?} is outside {min}-{max}"));
        }
        let mut value = low;
        while value <= high {
            set |= 1 << value;
            match value.checked_add(step) {
                Some(next) => value = next,
                None => break,
            }
        }
    }
    Ok(set)
}

fn number(text: &str, what: &str, field: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| format!("{what} field {field:?}: {text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_release_build_and_schedules() {
        let procfile = Procfile::parse(
            "# comment\n\
             web: python3 app.py --port $PORT\n\
             worker: python3 worker.py\n\
             release: python3 migrate.py\n\
             build: make assets\n\
             cron-report: */15 * * * * python3 report.py --all\n",
        )
        .unwrap();
        assert_eq!(procfile.processes["web"], "python3 app.py --port $PORT");
        assert_eq!(procfile.processes.len(), 2);
        assert_eq!(procfile.release.as_deref(), Some("python3 migrate.py"));
        assert_eq!(procfile.build.as_deref(), Some("make assets"));
        let report = &procfile.scheduled["cron-report"];
        assert_eq!(report.spec, "*/15 * * * *");
        assert_eq!(report.command, "python3 report.py --all");
        assert!(report.schedule.matches(45, 3, 1, 1, 0));
        assert!(!report.schedule.matches(44, 3, 1, 1, 0));
    }

    #[test]
    fn cron_fields() {
        let s = Schedule::parse("0 9-17 * * 1-5").unwrap();
        assert!(s.matches(0, 9, 10, 6, 1));
        assert!(!s.matches(0, 18, 10, 6, 1));
        assert!(!s.matches(0, 9, 10, 6, 6));
        let sunday = Schedule::parse("30 4 * * 7").unwrap();
        assert!(sunday.matches(30, 4, 3, 3, 0));
        // Both day fields set: either matches.
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(either.matches(0, 0, 1, 5, 3));
        assert!(either.matches(0, 0, 9, 5, 1));
        assert!(!either.matches(0, 0, 9, 5, 2));
        assert!(Schedule::parse("60 * * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
        assert!(Schedule::parse("* * * *").is_err());
        assert!(Schedule::parse("1/4294967295 * * * *").is_ok());
    }

    #[test]
    fn next_run_times() {
        // 2026-11-24 20:07:30 UTC is a Tuesday.
        let t = 1_795_550_850;
        let every_15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(every_15.next_after(t), Some(1_795_551_300)); // 20:15
        let nightly = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(nightly.next_after(t), Some(1_795_573_800)); // 25th 02:30
        let sundays = Schedule::parse("0 0 * * 0").unwrap();
        assert_eq!(sundays.next_after(t), Some(1_795_910_400)); // Sun 29th 00:00
        let every_minute = Schedule::parse("* * * * *").unwrap();
        assert_eq!(every_minute.next_after(t), Some(1_795_550_880));
        let never = Schedule::parse("0 0 31 2 *").unwrap();
        assert_eq!(never.next_after(t), None);
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        let err = Procfile::parse("web: ok\nworker\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(Procfile::parse("Web: x").is_err());
        assert!(
            Procfile::parse("web: a\nweb: b")
                .unwrap_err()
                .reason
                .contains("twice")
        );
        assert!(
            Procfile::parse("release: migrate").is_err(),
            "needs a process type"
        );
        assert!(
            Procfile::parse("tick: */5 * * * *")
                .unwrap_err()
                .reason
                .contains("no command")
        );
        assert!(Procfile::parse("tick: 99 * * * * run").is_err());
    }
}
