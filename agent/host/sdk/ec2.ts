// Only what the agent sends: a named re-export lets the bundler drop the rest of the client
// (see ../aws.ts).
export {
  EC2Client,
  DescribeVolumesCommand,
  DescribeInstancesCommand,
  AttachVolumeCommand,
  DetachVolumeCommand,
} from '@aws-sdk/client-ec2';
