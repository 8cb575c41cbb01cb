"""The usage gate: a scheduled sweep that requires IMDSv2 on instances proven not to use IMDSv1."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from constructs import Construct

from imds_enforcer.domain.settings import CallerAnalysis
from infra.constructs.enforcer_function import EnforcerFunction, FunctionWiring
from infra.constructs.gate_continuation import GateContinuation
from infra.constructs.permissions import DoorArns, ResourceArns, usage_gate_permissions

HANDLER = "imds_enforcer.handlers.usage_gate.handler"


class UsageGate(Construct):
    """The usage gate Lambda, its schedule, and its continuation (a sweep longer than one run goes on at once).

    ``fix_launch_templates`` / ``fix_images`` grant the writes that fix those launch sources (opt-in);
    ``fix_sagemaker_notebooks`` / ``fix_lightsail_instances`` those of the doors outside EC2 (opt-in);
    ``caller_analysis`` what the caller analysis needs (``analyzer_document_arn``: the stack's document).
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
        fix_sagemaker_notebooks: bool = False,
        fix_lightsail_instances: bool = False,
        caller_analysis: CallerAnalysis = CallerAnalysis.OFF,
        analyzer_document_arn: str = "",
        ledger_table_arn: str,
        pending_index_arn: str,
    ) -> None:
        super().__init__(scope, construct_id)
        arns = ResourceArns.of(self)
        self.continuation = GateContinuation(self, "Continuation")
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
                exemption_parameter_arn=ResourceArns.parameter(self, exemption_parameter),
                set_account_default=set_account_default,
                rollback=rollback,
                launch_template_arn=arns.launch_template,
                image_arn=arns.image,
                fix_launch_templates=fix_launch_templates,
                fix_images=fix_images,
                doors=DoorArns.of(self),
                fix_sagemaker_notebooks=fix_sagemaker_notebooks,
                fix_lightsail_instances=fix_lightsail_instances,
                caller_analysis=caller_analysis,
                analyzer_document_arn=analyzer_document_arn,
                ledger_table_arn=ledger_table_arn,
                pending_index_arn=pending_index_arn,
            )
            + self.continuation.permissions(),
            memory_size=memory_mb,
            timeout=cdk.Duration.minutes(timeout_minutes),
            # Never two runs at once: they would race to switch (and report) the same instances, and pace against
            # each other in EC2's one bucket. A continuation that fires while a run is still going waits its turn.
            reserved_concurrency=1,
        )
        self.continuation.connect(self.enforcer)
        self.schedule_rule = events.Rule(
            self,
            "Schedule",
            description="Runs the IMDSv2 usage gate sweep",
            schedule=events.Schedule.rate(cdk.Duration.hours(schedule_hours)),
            # A missed sweep is simply done by the next one.
            targets=[self.enforcer.as_target(retry_attempts=2, max_event_age=cdk.Duration.hours(1))],
        )
