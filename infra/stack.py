"""One IMDSv2 Enforcer deployment (an account and region): composes the constructs, wires grants and outputs."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from constructs import Construct

from imds_enforcer.domain.guardrails import service_role_arns
from imds_enforcer.domain.organization import ORG_REPORT_KEY_ALIAS
from imds_enforcer.domain.settings import CallerAnalysis
from infra import FUNCTIONS_DIR, REPO_ROOT
from infra.config import DeployConfig, partition_of
from infra.constructs.caller_analysis import AnalyzerDocument
from infra.constructs.chat_channel import ChatChannel
from infra.constructs.enforcer_function import (
    DependenciesLayer,
    EnforcerFunction,
    FunctionWiring,
    log_retention,
    runtime_python_version,
)
from infra.constructs.guardrails import GuardrailPolicy
from infra.constructs.launch_watch import LaunchWatch
from infra.constructs.monitoring import Monitoring
from infra.constructs.organization import Artifacts, AuditRole, StackSetMember
from infra.constructs.permissions import central_report_permissions
from infra.constructs.rejection_watch import RejectionWatch
from infra.constructs.report_topic import ReportTopic
from infra.constructs.slack_notifier import SlackNotifier
from infra.constructs.state_table import StateTable
from infra.constructs.usage_gate import UsageGate
from infra.layer import build_dependencies_layer

LAYER_BUILD_DIR = REPO_ROOT / "build" / "layer"


def stack_name(region: str) -> str:
    return f"ImdsEnforcer-{region}"


def add_guardrails(scope: Construct, *, config: DeployConfig, region: str) -> GuardrailPolicy | None:
    """The guardrail policy, in the first region's stack only (``DeployConfig.guardrails_region``); else None.

    Policies are global, and an SCP's name must be unique in the organization: one copy per regional stack would
    fail to deploy (SCP) or duplicate the same managed policy in every region.
    """
    mode = config.guardrails_mode
    if mode is None or region != config.guardrails_region:
        return None
    partition = partition_of(region)
    account = cdk.Stack.of(scope).account
    # IAM mode: the exact roles of every regional stack of this account. (An identity policy is evaluated only for
    # principals of its own account, so "*" names the same roles when the account is not known at synth.) SCP mode
    # spans accounts: the fixed-name pattern, protected by ProtectServiceRoles.
    service_roles = (
        service_role_arns(
            partition=partition, account="*" if cdk.Token.is_unresolved(account) else account, regions=config.regions
        )
        if mode == "iam"
        else ()
    )
    return GuardrailPolicy(
        scope,
        "Guardrails",
        mode=mode,
        max_hop_limit=config.guardrail_max_hop_limit,
        break_glass_role_arns=config.break_glass_role_arns,
        scp_target_ids=config.scp_target_ids,
        include_role_delivery=config.guardrail_role_delivery,
        partition=partition,
        service_role_arns=service_roles,
        deployment_role_arns=config.guardrail_deployment_role_arns,
    )


def build_layer(layer_dir: Path = LAYER_BUILD_DIR) -> Path:
    return build_dependencies_layer(
        requirements=FUNCTIONS_DIR / "requirements.txt", out_dir=layer_dir, python_version=runtime_python_version()
    )


class ImdsEnforcerStack(cdk.Stack):
    """One account and region. With ``member`` (organization mode) it is the StackSet's member template: code and
    layer from the region's asset bucket (no CDK assets), reports also to the security account's topic, and the
    audit role; ``config`` is then ``DeployConfig.member_config()``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeployConfig,
        env: cdk.Environment | None = None,
        layer_dir: Path = LAYER_BUILD_DIR,
        member: Artifacts | None = None,
        synthesizer: cdk.IStackSynthesizer | None = None,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            env=env,
            description="IMDSv2 Enforcer: drives this account and region to IMDSv2-only, safely, and reports it",
            synthesizer=synthesizer,
        )

        report = ReportTopic(
            self,
            "Report",
            notification_emails=config.notification_emails,
            email_min_severity=config.email_min_severity,
        )
        state = StateTable(self, "State")
        runtime = config.runtime
        # Opt-in: the ImdsPacketAnalyzer as a command document of this stack, for the gate's caller analysis.
        analyzer = (
            AnalyzerDocument(self, "CallerAnalysis", default_minutes=runtime.CALLER_ANALYSIS_MINUTES)
            if runtime.CALLER_ANALYSIS is CallerAnalysis.RUN
            else None
        )
        stack_values = {
            "ledger_table_name": state.table.table_name,
            "analyzer_document": analyzer.document_name if analyzer else "",
        }
        log_days = log_retention(config.log_retention_days)
        organization: StackSetMember | None = None
        if member is None:
            layer = DependenciesLayer(self, "Dependencies", layer_dir=build_layer(layer_dir))
            wiring = FunctionWiring.of(
                code_dir=FUNCTIONS_DIR,
                layers=[layer.layer],
                environment=config.lambda_environment(report.topic.topic_arn, **stack_values),
                log_retention=log_days,
            )
        else:
            organization = StackSetMember(self, "Organization", artifacts=member)
            layer = DependenciesLayer(self, "Dependencies", code=organization.layer_code)
            ou = organization.organizational_unit.value_as_string
            wiring = FunctionWiring(
                code=organization.code,
                layers=(layer.layer,),
                environment=config.lambda_environment(report.topic.topic_arn, organizational_unit=ou, **stack_values),
                log_retention=log_days,
            )

        launch_watch = LaunchWatch(
            self,
            "LaunchWatch",
            wiring=wiring,
            ledger_table_arn=state.table.table_arn,
            exempt_tag_key=runtime.EXEMPT_TAG_KEY,
            exemption_parameter=runtime.EXEMPTION_PARAMETER,
            fix_launch_templates=runtime.FIX_LAUNCH_TEMPLATES,
            fix_images=runtime.FIX_IMAGES,
            fix_sagemaker_notebooks=runtime.FIX_SAGEMAKER_NOTEBOOKS,
            fix_lightsail_instances=runtime.FIX_LIGHTSAIL_INSTANCES,
        )
        usage_gate = UsageGate(
            self,
            "UsageGate",
            wiring=wiring,
            schedule_hours=config.gate_schedule_hours,
            memory_mb=config.gate_memory_mb,
            timeout_minutes=config.gate_timeout_minutes,
            exempt_tag_key=runtime.EXEMPT_TAG_KEY,
            exemption_parameter=runtime.EXEMPTION_PARAMETER,
            set_account_default=runtime.SET_ACCOUNT_DEFAULT,
            rollback=runtime.ROLLBACK_ON_REJECTED,
            fix_launch_templates=runtime.FIX_LAUNCH_TEMPLATES,
            fix_images=runtime.FIX_IMAGES,
            fix_sagemaker_notebooks=runtime.FIX_SAGEMAKER_NOTEBOOKS,
            fix_lightsail_instances=runtime.FIX_LIGHTSAIL_INSTANCES,
            caller_analysis=runtime.CALLER_ANALYSIS,
            analyzer_document_arn=analyzer.document_arn if analyzer else "",
            ledger_table_arn=state.table.table_arn,
            pending_index_arn=state.pending_index_arn,
        )
        rejection_watch = RejectionWatch(
            self,
            "RejectionWatch",
            wiring=wiring,
            exempt_tag_key=runtime.EXEMPT_TAG_KEY,
            exemption_parameter=runtime.EXEMPTION_PARAMETER,
            rollback=runtime.ROLLBACK_ON_REJECTED,
            ledger_table_arn=state.table.table_arn,
        )
        # Only the three that report may publish; the Slack notifier only reads the topic.
        for enforcer in (launch_watch.enforcer, usage_gate.enforcer, rejection_watch.enforcer):
            report.grant_publish(enforcer.role)
        functions = {
            "LaunchWatch": launch_watch.enforcer,
            "UsageGate": usage_gate.enforcer,
            "RejectionWatch": rejection_watch.enforcer,
        }
        if organization is not None:
            self._join_organization(config, organization, list(functions.values()))

        if config.slack_enabled:
            slack = SlackNotifier(
                self,
                "SlackNotifier",
                topic=report.topic,
                webhook_secret=runtime.SLACK_WEBHOOK_SECRET,
                webhook_secret_kms_key_arn=config.slack_webhook_secret_kms_key_arn,
                wiring=wiring.with_environment(config.slack_environment()),
            )
            functions["SlackNotifier"] = slack.enforcer
            cdk.CfnOutput(self, "SlackNotifierFunctionName", value=slack.enforcer.function.function_name)
            cdk.CfnOutput(self, "SlackNotifierDeadLetterQueueUrl", value=slack.enforcer.dead_letter_queue.queue_url)

        if config.chat_channel_enabled:
            # Notifications only: AWS Chatbot posts what reaches the topic; its role and guardrail allow nothing.
            chat = ChatChannel(
                self,
                "ChatChannel",
                topic=report.topic,
                topic_key=report.key,
                slack_workspace_id=config.slack_workspace_id,
                slack_channel_id=config.slack_channel_id,
            )
            cdk.CfnOutput(
                self,
                "SlackChannelConfigurationArn",
                value=chat.configuration.slack_channel_configuration_arn,
            )

        # Alarms notify the report topic too, so one subscription hears everything; see ReportTopic.allow_alarms.
        monitoring = Monitoring(
            self, "Monitoring", functions=functions, alarm_topic=report.topic, alarms=[rejection_watch.alarm]
        )
        report.allow_alarms(monitoring.alarms)

        guardrails = add_guardrails(self, config=config, region=(env.region if env else None) or "")
        if guardrails is not None and guardrails.managed_policy is not None:
            cdk.CfnOutput(
                self,
                "GuardrailsManagedPolicyArn",
                value=guardrails.managed_policy.managed_policy_arn,
                description="Attach to the principals the IMDSv2 guardrails should bind (it binds only those)",
            )

        if analyzer is not None:
            cdk.CfnOutput(self, "CallerAnalysisDocumentName", value=analyzer.document_name)
        cdk.CfnOutput(self, "ReportTopicArn", value=report.topic.topic_arn, description="Subscribe here for reports")
        cdk.CfnOutput(self, "LaunchWatchFunctionName", value=launch_watch.enforcer.function.function_name)
        cdk.CfnOutput(self, "UsageGateFunctionName", value=usage_gate.enforcer.function.function_name)
        cdk.CfnOutput(self, "LaunchWatchDeadLetterQueueUrl", value=launch_watch.enforcer.dead_letter_queue.queue_url)
        cdk.CfnOutput(self, "UsageGateDeadLetterQueueUrl", value=usage_gate.enforcer.dead_letter_queue.queue_url)
        cdk.CfnOutput(self, "RejectionWatchFunctionName", value=rejection_watch.enforcer.function.function_name)
        cdk.CfnOutput(
            self,
            "DashboardUrl",
            value=f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#dashboards:name={monitoring.dashboard.dashboard_name}",
        )

    def _join_organization(
        self, config: DeployConfig, organization: StackSetMember, enforcers: list[EnforcerFunction]
    ) -> None:
        """Reports also go to the security account's topic; the organization audit gets its read-only role."""
        home = config.home_region
        partition = partition_of(home)
        central = central_report_permissions(
            topic_arn=config.central_report_topic_arn,
            key_arn=f"arn:{partition}:kms:{home}:{config.central_reports_account}:key/*",
            key_alias=ORG_REPORT_KEY_ALIAS,
            region=home,
        )
        for enforcer in enforcers:
            enforcer.add_permissions(central)
        AuditRole(
            self,
            "Audit",
            role_name=config.audit_role_name,
            trusted_account=organization.trusted_account.value_as_string,
            home_region=home,
        )
