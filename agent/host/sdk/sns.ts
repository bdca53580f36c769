// Only what the agent sends: a named re-export lets the bundler drop the rest of the client
// (see ../aws.ts).
export {
  SNSClient,
  PublishCommand,
} from '@aws-sdk/client-sns';
