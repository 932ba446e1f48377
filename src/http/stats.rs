//! `GET /api/v1/stats?since=2026-11-01&trigger=ios-build`: the farm's history (the `stats`
//! projection) from `since` (30 days back unless asked) to today, of one trigger or all. Answered
//! from memory: the projection holds every kept day, so an answer costs the days it covers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use meshgate_projections::StatsAnswer;
use serde::Deserialize;

use super::access::Reader;
use super::api::{caught_up, AdminApi};
use super::extract::ApiQuery;
use super::openapi::ErrorBody;
use super::ApiError;

/// Days an answer covers unless `since` says otherwise (today among them).
pub const DEFAULT_DAYS: i64 = 30;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsFilter {
    /// The first day (`2026-11-01`, or an RFC 3339 time: its UTC day); not after today. Default:
    /// 29 days before today. Days older than the 90 kept are not counted (`kept_since`).
    since: Option<String>,
    /// One trigger's builds; default: every trigger's.
    trigger: Option<String>,
}

/// The day `since` names.
fn parse_since(since: &str, today: NaiveDate) -> Result<NaiveDate, ApiError> {
    let day = since.parse::<NaiveDate>().or_else(|_| since.parse::<DateTime<Utc>>().map(|t| t.date_naive())).map_err(
        |_| {
            ApiError::invalid_filter("since", format!("since `{since}` is not a date (2026-11-01) or an RFC 3339 time"))
        },
    )?;
    if day > today {
        return Err(ApiError::invalid_filter("since", format!("since {day} is in the future (today is {today} UTC)")));
    }
    Ok(day)
}

/// Build history: durations, queue waits, outcomes and pass rates day by day, the slowest
/// scripts, the most failing and flaky tests, and each node's failures.
#[utoipa::path(get, path = "/api/v1/stats", tag = "builds", params(StatsFilter), security(("admin" = [])),
    responses(
        (status = 200, description = "The history asked about", body = StatsAnswer),
        (status = 400, description = "`since` is not a date, or in the future", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin token", body = ErrorBody),
        (status = 404, description = "No such trigger (not configured, no build kept)", body = ErrorBody),
        (status = 503, description = "The projections are behind", body = ErrorBody),
    ))]
pub async fn stats(
    // The token first: a caller without it learns nothing of the filters.
    _: Reader,
    State(app): State<Arc<AdminApi>>,
    query: Result<ApiQuery<StatsFilter>, ApiError>,
) -> Result<Json<StatsAnswer>, ApiError> {
    let ApiQuery(filter) = query?;
    let today = Utc::now().date_naive();
    let since = match filter.since.as_deref() {
        Some(since) => parse_since(since, today)?,
        None => today - chrono::Duration::days(DEFAULT_DAYS - 1),
    };
    caught_up(&app).await?;
    let trigger = filter.trigger.as_deref();
    app.projections.read(|p| {
        if let Some(name) = trigger {
            if !app.config.triggers.iter().any(|t| t.name == name) && !p.stats.knows_trigger(name) {
                let mut e = ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no trigger `{name}`"));
                e.field = Some("trigger".into());
                return Err(e);
            }
        }
        Ok(Json(p.stats.answer(since, today, trigger)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_day_or_a_time_and_never_in_the_future() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        assert_eq!(parse_since("2026-11-01", today).unwrap(), NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert_eq!(parse_since("2026-12-06T23:30:00-02:00", today).unwrap(), today, "a time is read as its UTC day");
        for wrong in ["yesterday", "2026-13-01", "", "2026-12-08"] {
            let e = parse_since(wrong, today).unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("since")), "{wrong}");
        }
    }
}
