"""The usage gate: a scheduled sweep that requires IMDSv2 on instances proven not to use IMDSv1."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from constructs import Construct

from infra.constructs.enforcer_function import EnforcerFunction, FunctionWiring
from infra.constructs.permissions import ResourceArns, usage_gate_permissions

HANDLER = "imds_enforcer.handlers.usage_gate.handler"


class UsageGate(Construct):
    """The usage gate Lambda and its schedule.

    ``fix_launch_templates`` / ``fix_images`` grant the writes that fix those launch sources (opt-in).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        wiring: FunctionWiring,
        schedule_hours: int,
        memory_mb: int,
        timeout_minutes: int,
        exempt_tag_key: str,
        exemption_parameter: str = "",
        set_account_default: bool,
        rollback: bool,
        fix_launch_templates: bool,
        fix_images: bool,
        ledger_table_arn: str,
        pending_index_arn: str,
    ) -> None:
        super().__init__(scope, construct_id)
        arns = ResourceArns.of(self)
        self.enforcer = EnforcerFunction(
            self,
            "Enforcer",
            name="usage-gate",
            wiring=wiring,
            handler=HANDLER,
            description="IMDSv2 Enforcer usage gate: requires IMDSv2 where MetadataNoToken stayed at zero",
            permissions=usage_gate_permissions(
                instance_arn=arns.instance,
                exempt_tag_key=exempt_tag_key,
                exemption_parameter_arn=ResourceArns.parameter(self, exemption_parameter)
                if exemption_parameter
                else "",
                set_account_default=set_account_default,
                rollback=rollback,
                launch_template_arn=arns.launch_template,
                image_arn=arns.image,
                fix_launch_templates=fix_launch_templates,
                fix_images=fix_images,
                ledger_table_arn=ledger_table_arn,
                pending_index_arn=pending_index_arn,
            ),
            memory_size=memory_mb,
            timeout=cdk.Duration.minutes(timeout_minutes),
            # Never two sweeps at once: they would race to switch (and report) the same instances.
            reserved_concurrency=1,
        )
        self.schedule_rule = events.Rule(
            self,
            "Schedule",
            description="Runs the IMDSv2 usage gate sweep",
            schedule=events.Schedule.rate(cdk.Duration.hours(schedule_hours)),
            targets=[
                targets.LambdaFunction(
                    self.enforcer.function,
                    dead_letter_queue=self.enforcer.dead_letter_queue,
                    retry_attempts=2,
                    # The gate is stateless: a missed sweep is simply done by the next one.
                    max_event_age=cdk.Duration.hours(1),
                )
            ],
        )
