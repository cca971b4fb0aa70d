//! Queries of the agents aggregate: agents and their versions, tasks, their messages (numbered
//! in the transaction that appends them) and their state documents (written conditionally).

use async_trait::async_trait;
use sqlx::Row;

use super::{all, as_i64, as_u64, insert_row, one, select, Columns, Constraints, SqliteStore};
use crate::{AgentRow, AgentStore, Result, StateWrite, StoreError, TaskMessageRow, TaskRow, TaskUpdate, VersionRow};

/// The statuses of a task that has not ended.
const LIVE: &str = "('starting', 'running', 'idle')";

#[async_trait]
impl AgentStore for SqliteStore {
    async fn insert_agent(&self, agent: &AgentRow) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let names = Constraints::default()
            .taken(format!("agent {}", agent.name))
            .missing(format!("namespace {}", agent.namespace));
        insert_row(&self.pool, agent, names).await
    }

    async fn find_agent(&self, namespace: &str, name_or_id: &str) -> Result<Option<AgentRow>> {
        let sql = select::<AgentRow>("WHERE namespace = ? AND (name = ? OR id = ?)");
        one(&self.pool, sqlx::query(&sql).bind(namespace).bind(name_or_id).bind(name_or_id)).await
    }

    async fn list_agents(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<AgentRow>> {
        self.page::<AgentRow>(namespace, after, limit).await
    }

    async fn delete_agent(&self, namespace: &str, id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let sql = format!("SELECT id FROM tasks WHERE agent_id = ? AND status IN {LIVE} ORDER BY id LIMIT 1");
        if let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
            let task: String = row.try_get("id")?;
            return Err(StoreError::Conflict(format!("task {task} of the agent")));
        }
        let r = sqlx::query("DELETE FROM agents WHERE namespace = ? AND id = ?")
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
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE agents SET deploys = ?, updated_at_ms = ? WHERE id = ? AND deploys = ?")
            .bind(deploys)
            .bind(at_ms)
            .bind(id)
            .bind(expected)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    async fn insert_version(&self, version: &VersionRow) -> Result<VersionRow> {
        let mut tx = self.write_tx().await?;
        let existing = select::<VersionRow>("WHERE agent_id = ? AND digest = ?");
        if let Some(v) = one(&mut *tx, sqlx::query(&existing).bind(&version.agent_id).bind(&version.digest)).await? {
            return Ok(v);
        }
        let names = Constraints::default().missing(format!("agent {}", version.agent_id));
        insert_row(&mut *tx, version, names).await?;
        tx.commit().await?;
        Ok(version.clone())
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
        all(&self.pool, q).await
    }

    async fn version_bytes(&self, namespace: &str) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(size), 0) AS bytes FROM \
             (SELECT MAX(size_bytes) AS size FROM agent_versions WHERE namespace = ? GROUP BY digest)",
        )
        .bind(namespace)
        .fetch_one(&self.pool)
        .await?;
        as_u64(&row, "bytes")
    }

    async fn version_digests(&self, namespace: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT digest FROM agent_versions WHERE namespace = ? ORDER BY digest")
            .bind(namespace)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("digest")?)).collect()
    }

    async fn insert_task(&self, task: &TaskRow) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let names = Constraints::default().missing(format!("agent version {}", task.version_id));
        insert_row(&self.pool, task, names).await
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
        let sql =
            select::<TaskRow>("WHERE namespace = ? AND (? IS NULL OR agent_id = ?) AND id > ? ORDER BY id LIMIT ?");
        let q = sqlx::query(&sql)
            .bind(namespace)
            .bind(agent_id)
            .bind(agent_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit));
        all(&self.pool, q).await
    }

    async fn tasks_in_status(&self, statuses: &[&str]) -> Result<Vec<TaskRow>> {
        let wanted = serde_json::to_string(statuses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sql = select::<TaskRow>("WHERE status IN (SELECT value FROM json_each(?)) ORDER BY id");
        all(&self.pool, sqlx::query(&sql).bind(wanted)).await
    }

    async fn update_task(&self, id: &str, u: &TaskUpdate) -> Result<Option<TaskRow>> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE tasks SET status = COALESCE(?, status), \
             reason = CASE WHEN ? THEN ? ELSE reason END, \
             sandbox_id = CASE WHEN ? THEN ? ELSE sandbox_id END, \
             session_id = CASE WHEN ? THEN ? ELSE session_id END, \
             ended_at_ms = COALESCE(?, ended_at_ms), \
             input_tokens = input_tokens + ?, output_tokens = output_tokens + ?, \
             updated_at_ms = ? \
             WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled') RETURNING {}",
            TaskRow::COLUMNS
        );
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
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT last_seq FROM tasks WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
        let mut seq = as_u64(&row, "last_seq")?;
        let mut seqs = Vec::with_capacity(messages.len());
        for (kind, body) in messages {
            seq += 1;
            sqlx::query("INSERT INTO task_messages (task_id, seq, type, body, created_at_ms) VALUES (?, ?, ?, ?, ?)")
                .bind(id)
                .bind(as_i64(seq))
                .bind(kind)
                .bind(body)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
            seqs.push(seq);
        }
        sqlx::query("UPDATE tasks SET last_seq = ? WHERE id = ?").bind(as_i64(seq)).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(seqs)
    }

    async fn task_message_bytes(&self, id: &str) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(LENGTH(CAST(body AS BLOB))), 0) AS bytes FROM task_messages WHERE task_id = ?",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        as_u64(&row, "bytes")
    }

    async fn task_messages(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskMessageRow>> {
        let rows = sqlx::query(
            "SELECT seq, type, body, created_at_ms FROM task_messages WHERE task_id = ? AND seq > ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(id)
        .bind(as_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
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
        let row = sqlx::query(
            "SELECT COALESCE(SUM(MAX(COALESCE(ended_at_ms, ?) - created_at_ms, 0)), 0) AS ms FROM sandboxes WHERE task_id = ?",
        )
        .bind(now_ms)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        as_u64(&row, "ms")
    }

    async fn task_state(&self, namespace: &str, id: &str) -> Result<Option<(String, u64)>> {
        let row = sqlx::query("SELECT state, state_version FROM tasks WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("state")?, as_u64(&r, "state_version")?))).transpose()
    }

    async fn put_task_state(
        &self,
        namespace: &str,
        id: &str,
        state: &str,
        expected: Option<u64>,
    ) -> Result<StateWrite> {
        let mut tx = self.write_tx().await?;
        let Some(row) = sqlx::query("SELECT state_version FROM tasks WHERE namespace = ? AND id = ?")
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
        sqlx::query("UPDATE tasks SET state = ?, state_version = ? WHERE id = ?")
            .bind(state)
            .bind(as_i64(next))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(StateWrite::Written(next))
    }
}
