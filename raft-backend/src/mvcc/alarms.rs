//! The alarm table (etcd's NOSPACE and CORRUPT alarms), written through the
//! log like any other state.

use cairn_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, ResponseHeader,
};
use rusqlite::{params, Connection};

use crate::error::Result;

/// Whether a NOSPACE alarm is raised: writes that add data are refused.
pub fn nospace(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM alarms WHERE alarm = ?1 LIMIT 1")?
        .exists([AlarmType::Nospace as i32])?)
}

/// Every active alarm, ordered by member and type.
pub fn list_alarms(conn: &Connection) -> Result<Vec<AlarmMember>> {
    let mut stmt =
        conn.prepare_cached("SELECT member_id, alarm FROM alarms ORDER BY member_id, alarm")?;
    let rows = stmt.query_map([], |r| {
        Ok(AlarmMember {
            member_id: r.get::<_, i64>(0)? as u64,
            alarm: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Applies an Alarm request (get, activate, deactivate).
pub fn apply_alarm(conn: &Connection, a: &AlarmRequest) -> Result<AlarmResponse> {
    let member = |member_id: u64, alarm: i32| AlarmMember { member_id, alarm };
    let mut alarms = Vec::new();
    match AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get) {
        AlarmAction::Get => alarms = list_alarms(conn)?,
        AlarmAction::Activate => {
            if a.alarm != AlarmType::None as i32 {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO alarms (member_id, alarm) VALUES (?1, ?2)",
                )?
                .execute(params![a.member_id as i64, a.alarm])?;
                alarms.push(member(a.member_id, a.alarm));
            }
        }
        AlarmAction::Deactivate => {
            let removed = conn
                .prepare_cached("DELETE FROM alarms WHERE member_id = ?1 AND alarm = ?2")?
                .execute(params![a.member_id as i64, a.alarm])?;
            if removed > 0 {
                alarms.push(member(a.member_id, a.alarm));
            }
        }
    }
    Ok(AlarmResponse {
        header: Some(ResponseHeader::default()),
        alarms,
    })
}
