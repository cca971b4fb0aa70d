//! Queries of the agents aggregate: agents and their versions, tasks, their messages (numbered
//! in the transaction that appends them, under the task row's lock) and their state documents
//! (written conditionally). Methods keyed by a task or agent id alone are the platform's.

use async_trait::async_trait;
use sqlx::Row;

use super::{as_i64, as_u64, insert_row, one, pg, select, Columns, Constraints, PgStore, Scope};
use crate::{AgentRow, AgentStore, Result, StateWrite, StoreError, TaskMessageRow, TaskRow, TaskUpdate, VersionRow};

/// The statuses of a task that has not ended.
const LIVE: &str = "('starting', 'running', 'idle')";

#[async_trait]
impl AgentStore for PgStore {
    async fn insert_agent(&self, agent: &AgentRow) -> Result<()> {
        let names = Constraints::default()
            .taken(format!("agent {}", agent.name))
            .missing(format!("namespace {}", agent.namespace));
        let mut tx = self.scoped(Scope::Namespace(&agent.namespace)).await?;
        insert_row(&mut tx, agent, names).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_agent(&self, namespace: &str, name_or_id: &str) -> Result<Option<AgentRow>> {
        let sql = select::<AgentRow>("WHERE namespace = ? AND (name = ? OR id = ?) ORDER BY name = ? DESC LIMIT 1");
        let q = sqlx::query(&sql).bind(namespace).bind(name_or_id).bind(name_or_id).bind(name_or_id);
        self.read_one(Scope::Namespace(namespace), q).await
    }

    async fn list_agents(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<AgentRow>> {
        self.page::<AgentRow>(namespace, after, limit).await
    }

    async fn delete_agent(&self, namespace: &str, id: &str) -> Result<bool> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        // The agent's row locked first: a task inserted meanwhile waits for this delete (and
        // then fails on its foreign key), so no live task is left without its agent.
        let locked = sqlx::query("SELECT 1 FROM agents WHERE namespace = $1 AND id = $2 FOR UPDATE")
            .bind(namespace)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let sql = format!("SELECT id FROM tasks WHERE agent_id = $1 AND status IN {LIVE} ORDER BY id LIMIT 1");
        if let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
            let task: String = row.try_get("id")?;
            return Err(StoreError::Conflict(format!("task {task} of the agent")));
        }
        let r = sqlx::query("DELETE FROM agents WHERE namespace = $1 AND id = $2")
            .bind(namespace)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    async fn set_deploys(&self, id: &str, expected: &[String], deploys: &[String], at_ms: i64) -> Result<bool> {
        let json = |v: &[String]| serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()));
        let (expected, deploys) = (json(expected)?, json(deploys)?);
        let q = sqlx::query("UPDATE agents SET deploys = $1, updated_at_ms = $2 WHERE id = $3 AND deploys = $4")
            .bind(deploys)
            .bind(at_ms)
            .bind(id)
            .bind(expected);
        Ok(self.write(Scope::Platform, q).await?.rows_affected() > 0)
    }

    async fn insert_version(&self, version: &VersionRow) -> Result<VersionRow> {
        let mut tx = self.scoped(Scope::Namespace(&version.namespace)).await?;
        let sql = format!("{} ON CONFLICT (agent_id, digest) DO NOTHING", super::insert::<VersionRow>());
        let names = Constraints::default().missing(format!("agent {}", version.agent_id));
        names.check(version.bind_all(sqlx::query(&sql))?.execute(&mut *tx).await)?;
        // The version of that content, this one or one inserted before.
        let existing = select::<VersionRow>("WHERE agent_id = ? AND digest = ?");
        let stored = one(&mut *tx, sqlx::query(&existing).bind(&version.agent_id).bind(&version.digest)).await?;
        tx.commit().await?;
        stored.ok_or_else(|| StoreError::NotFound(format!("agent {}", version.agent_id)))
    }

    async fn get_version(&self, namespace: &str, id: &str) -> Result<Option<VersionRow>> {
        self.get_in::<VersionRow>(namespace, id).await
    }

    async fn list_versions(
        &self,
        namespace: &str,
        agent_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<VersionRow>> {
        let sql = select::<VersionRow>("WHERE namespace = ? AND agent_id = ? AND id > ? ORDER BY id LIMIT ?");
        let q = sqlx::query(&sql).bind(namespace).bind(agent_id).bind(after.unwrap_or("")).bind(i64::from(limit));
        self.read_all(Scope::Namespace(namespace), q).await
    }

    async fn version_bytes(&self, namespace: &str) -> Result<u64> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(size), 0)::BIGINT AS bytes FROM \
             (SELECT MAX(size_bytes) AS size FROM agent_versions WHERE namespace = $1 GROUP BY digest) AS d",
        )
        .bind(namespace)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        as_u64(&row, "bytes")
    }

    async fn version_digests(&self, namespace: &str) -> Result<Vec<String>> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let rows = sqlx::query("SELECT DISTINCT digest FROM agent_versions WHERE namespace = $1 ORDER BY digest")
            .bind(namespace)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("digest")?)).collect()
    }

    async fn insert_task(&self, task: &TaskRow) -> Result<()> {
        let names = Constraints::default().missing(format!("agent version {}", task.version_id));
        let mut tx = self.scoped(Scope::Namespace(&task.namespace)).await?;
        insert_row(&mut tx, task, names).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_task(&self, namespace: &str, id: &str) -> Result<bool> {
        self.delete_in::<TaskRow>(namespace, id).await
    }

    async fn get_task(&self, namespace: &str, id: &str) -> Result<Option<TaskRow>> {
        self.get_in::<TaskRow>(namespace, id).await
    }

    async fn list_tasks(
        &self,
        namespace: &str,
        agent_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskRow>> {
        let sql = select::<TaskRow>(
            "WHERE namespace = ? AND (?::text IS NULL OR agent_id = ?) AND id > ? ORDER BY id LIMIT ?",
        );
        let q = sqlx::query(&sql)
            .bind(namespace)
            .bind(agent_id)
            .bind(agent_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit));
        self.read_all(Scope::Namespace(namespace), q).await
    }

    async fn tasks_in_status(&self, statuses: &[&str]) -> Result<Vec<TaskRow>> {
        let wanted: Vec<String> = statuses.iter().map(|s| (*s).to_owned()).collect();
        let sql = select::<TaskRow>("WHERE status = ANY(?) ORDER BY id");
        self.read_all(Scope::Platform, sqlx::query(&sql).bind(wanted)).await
    }

    async fn update_task(&self, id: &str, u: &TaskUpdate) -> Result<Option<TaskRow>> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let sql = pg(&format!(
            "UPDATE tasks SET status = COALESCE(?, status), \
             reason = CASE WHEN ? THEN ? ELSE reason END, \
             sandbox_id = CASE WHEN ? THEN ? ELSE sandbox_id END, \
             session_id = CASE WHEN ? THEN ? ELSE session_id END, \
             ended_at_ms = COALESCE(?, ended_at_ms), \
             input_tokens = input_tokens + ?, output_tokens = output_tokens + ?, \
             updated_at_ms = ? \
             WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled') RETURNING {}",
            TaskRow::COLUMNS
        ));
        let q = sqlx::query(&sql)
            .bind(u.status.as_deref())
            .bind(u.reason.is_some())
            .bind(u.reason.clone().flatten())
            .bind(u.sandbox_id.is_some())
            .bind(u.sandbox_id.clone().flatten())
            .bind(u.session_id.is_some())
            .bind(u.session_id.clone().flatten())
            .bind(u.ended_at_ms)
            .bind(as_i64(u.input_tokens))
            .bind(as_i64(u.output_tokens))
            .bind(u.at_ms)
            .bind(id);
        let row = match one::<TaskRow>(&mut *tx, q).await? {
            Some(row) => Some(row),
            None => one(&mut *tx, sqlx::query(&select::<TaskRow>("WHERE id = ?")).bind(id)).await?,
        };
        tx.commit().await?;
        Ok(row)
    }

    async fn append_messages(&self, id: &str, messages: &[(String, String)], at_ms: i64) -> Result<Vec<u64>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.scoped(Scope::Platform).await?;
        // The task's row locked: appends to one task number their messages one after another.
        let row = sqlx::query("SELECT namespace, last_seq FROM tasks WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
        let namespace: String = row.try_get("namespace")?;
        let mut seq = as_u64(&row, "last_seq")?;
        let mut seqs = Vec::with_capacity(messages.len());
        for (kind, body) in messages {
            seq += 1;
            sqlx::query(
                "INSERT INTO task_messages (task_id, namespace, seq, type, body, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(&namespace)
            .bind(as_i64(seq))
            .bind(kind)
            .bind(body)
            .bind(at_ms)
            .execute(&mut *tx)
            .await?;
            seqs.push(seq);
        }
        sqlx::query("UPDATE tasks SET last_seq = $1 WHERE id = $2")
            .bind(as_i64(seq))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(seqs)
    }

    async fn task_message_bytes(&self, id: &str) -> Result<u64> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(octet_length(body)), 0)::BIGINT AS bytes FROM task_messages WHERE task_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        as_u64(&row, "bytes")
    }

    async fn task_messages(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskMessageRow>> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let rows = sqlx::query(
            "SELECT seq, type, body, created_at_ms FROM task_messages WHERE task_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(as_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(TaskMessageRow {
                    seq: as_u64(r, "seq")?,
                    kind: r.try_get("type")?,
                    body: r.try_get("body")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    async fn task_sandbox_ms(&self, id: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.scoped(Scope::Platform).await?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(GREATEST(COALESCE(ended_at_ms, $1) - created_at_ms, 0)), 0)::BIGINT AS ms \
             FROM sandboxes WHERE task_id = $2",
        )
        .bind(now_ms)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        as_u64(&row, "ms")
    }

    async fn task_state(&self, namespace: &str, id: &str) -> Result<Option<(String, u64)>> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let row = sqlx::query("SELECT state, state_version FROM tasks WHERE namespace = $1 AND id = $2")
            .bind(namespace)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(|r| Ok((r.try_get("state")?, as_u64(&r, "state_version")?))).transpose()
    }

    async fn put_task_state(
        &self,
        namespace: &str,
        id: &str,
        state: &str,
        expected: Option<u64>,
    ) -> Result<StateWrite> {
        let mut tx = self.scoped(Scope::Namespace(namespace)).await?;
        let Some(row) = sqlx::query("SELECT state_version FROM tasks WHERE namespace = $1 AND id = $2 FOR UPDATE")
            .bind(namespace)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(StateWrite::NotFound);
        };
        let current = as_u64(&row, "state_version")?;
        if expected.is_some_and(|e| e != current) {
            return Ok(StateWrite::Stale(current));
        }
        let next = current + 1;
        sqlx::query("UPDATE tasks SET state = $1, state_version = $2 WHERE id = $3")
            .bind(state)
            .bind(as_i64(next))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(StateWrite::Written(next))
    }
}
