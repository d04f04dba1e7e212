-- The agent runtime's durable state. A run is claimed by one process at a time
-- (a lease it renews while working), waits for an approval without any process
-- holding it, and is finished at most once. Steps record the results of a run's
-- side effects (LLM replies, handoffs, approval verdicts), so a run resumed in
-- another process replays them instead of repeating them.
CREATE TABLE agent_runs (
    tenant_id      text        NOT NULL,
    agent_name     text        NOT NULL,
    run_id         text        NOT NULL,
    status         text        NOT NULL
                   CHECK (status IN ('running', 'waiting', 'completed', 'failed')),
    instance_id    text,
    lease_until    timestamptz,
    approval_id    text,
    accepted       bytea       NOT NULL,
    accepted_topic text        NOT NULL,
    accepted_partition integer NOT NULL,
    accepted_offset    bigint  NOT NULL,
    executions     integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_name, run_id)
);
CREATE UNIQUE INDEX agent_runs_by_approval ON agent_runs (tenant_id, agent_name, approval_id)
    WHERE approval_id IS NOT NULL;

CREATE TABLE agent_run_steps (
    tenant_id  text        NOT NULL,
    agent_name text        NOT NULL,
    run_id     text        NOT NULL,
    step       text        NOT NULL,
    result     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_name, run_id, step)
);
