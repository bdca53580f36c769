// Only what the agent sends: a named re-export lets the bundler drop the rest of the client
// (see ../aws.ts).
export {
  IAMClient,
  GetGroupCommand,
  GetSSHPublicKeyCommand,
  ListSSHPublicKeysCommand,
} from '@aws-sdk/client-iam';
