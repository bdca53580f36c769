import { AutoScalingClient, CompleteLifecycleActionCommand, DescribeAutoScalingGroupsCommand, RecordLifecycleActionHeartbeatCommand } from '@aws-sdk/client-auto-scaling';
import { CloudFormationClient, SignalResourceCommand } from '@aws-sdk/client-cloudformation';
import {
  AttachNetworkInterfaceCommand,
  AttachVolumeCommand,
  CreateNetworkInterfaceCommand,
  CreateRouteCommand,
  CreateRouteTableCommand,
  DescribeVpcsCommand,
  CreateVolumeCommand,
  DescribeNetworkInterfacesCommand,
  DescribeSubnetsCommand,
  DetachNetworkInterfaceCommand,
  DescribeImagesCommand,
  DescribeVolumesCommand,
  DetachVolumeCommand,
  EC2Client,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type Volume,
} from '@aws-sdk/client-ec2';
import { KMSClient, ListKeysCommand } from '@aws-sdk/client-kms';
import { CreateBucketCommand, GetObjectCommand, ListBucketsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startMoto, type Moto } from '../testbed/moto.js';

const credentials = { accessKeyId: 'testing', secretAccessKey: 'testing' };
const AZ = 'us-east-1a';

let moto: Moto;
let proxy: FidelityProxy;
let imageId: string;
const clients = (o: { maxAttempts?: number; requestTimeout?: number } = {}) => {
  const base = {
    endpoint: proxy.endpoint,
    region: 'us-east-1',
    credentials,
    ...(o.maxAttempts ? { maxAttempts: o.maxAttempts } : {}),
    // Without throwOnRequestTimeout the SDK only warns when requestTimeout passes, and waits on.
    ...(o.requestTimeout ? { requestHandler: { requestTimeout: o.requestTimeout, throwOnRequestTimeout: true } } : {}),
  };
  return {
    ec2: new EC2Client(base),
    asg: new AutoScalingClient(base),
    cfn: new CloudFormationClient(base),
    s3: new S3Client({ ...base, forcePathStyle: true }),
    kms: new KMSClient(base),
  };
};

beforeAll(async () => {
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  const images = await clients().ec2.send(new DescribeImagesCommand({}));
  imageId = images.Images![0]!.ImageId!;
});

afterAll(async () => {
  await proxy?.stop();
  await moto?.stop();
});

afterEach(() => {
  proxy.clearFaults();
  proxy.setAttachDelayMs(0);
  proxy.setEniDetachDelayMs(0);
});

async function launch(): Promise<string> {
  const r = await clients().ec2.send(
    new RunInstancesCommand({ ImageId: imageId, InstanceType: 't3.small', MinCount: 1, MaxCount: 1, Placement: { AvailabilityZone: AZ } }),
  );
  return r.Instances![0]!.InstanceId!;
}

async function createVolume(): Promise<string> {
  const v = await clients().ec2.send(new CreateVolumeCommand({ AvailabilityZone: AZ, Size: 1 }));
  return v.VolumeId!;
}

async function describe1(volumeId: string): Promise<Volume> {
  const r = await clients().ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }));
  return r.Volumes![0]!;
}

/** Polls until `fn` returns a value; fails after `timeoutMs`. */
async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

describe('EBS volumes behave as on AWS', () => {
  it('answers VolumeInUse to a second attach of an attached volume, and keeps the first holder', async () => {
    const [holder, other, volumeId] = await Promise.all([launch(), launch(), createVolume()]);
    const { ec2 } = clients();
    await ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: holder, Device: '/dev/xvdf' }));

    const second = ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: other, Device: '/dev/xvdf' }));

    await expect(second).rejects.toMatchObject({ name: 'VolumeInUse', $metadata: { httpStatusCode: 400 } });
    expect((await describe1(volumeId)).Attachments).toMatchObject([{ InstanceId: holder, State: 'attached' }]);
  });

  it('shows an attach as attaching until the delay has passed, then attached', async () => {
    proxy.setAttachDelayMs(1500);
    const [instanceId, volumeId] = await Promise.all([launch(), createVolume()]);
    const started = Date.now();

    const attach = await clients().ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: instanceId, Device: '/dev/xvdf' }));

    expect(attach.State).toBe('attaching');
    expect(await describe1(volumeId)).toMatchObject({ State: 'in-use', Attachments: [{ InstanceId: instanceId, Device: '/dev/xvdf', State: 'attaching' }] });
    await until('attached', async () => ((await describe1(volumeId)).Attachments?.[0]?.State === 'attached' ? true : undefined));
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
  });

  it('keeps a detaching volume in use, refuses to attach it meanwhile, then makes it available', async () => {
    const [holder, successor, volumeId] = await Promise.all([launch(), launch(), createVolume()]);
    const { ec2 } = clients();
    await ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: holder, Device: '/dev/xvdf' }));
    proxy.setAttachDelayMs(1500);

    // Without InstanceId, as the agent may call it (moto 5.2.1 answers HTTP 500 to that).
    const detach = await ec2.send(new DetachVolumeCommand({ VolumeId: volumeId }));

    expect(detach).toMatchObject({ State: 'detaching', InstanceId: holder });
    expect(await describe1(volumeId)).toMatchObject({ State: 'in-use', Attachments: [{ InstanceId: holder, State: 'detaching' }] });
    await expect(ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: successor, Device: '/dev/xvdf' }))).rejects.toMatchObject({
      name: 'VolumeInUse',
    });
    await until('available', async () => ((await describe1(volumeId)).State === 'available' ? true : undefined));
    expect((await describe1(volumeId)).Attachments).toEqual([]);
    await ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: successor, Device: '/dev/xvdf' }));
  });

  it('detaches the volume of a terminated holder only after the delay', async () => {
    const [holder, volumeId] = await Promise.all([launch(), createVolume()]);
    const { ec2 } = clients();
    await ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: holder, Device: '/dev/xvdf' }));
    proxy.setAttachDelayMs(1500);

    await ec2.send(new TerminateInstancesCommand({ InstanceIds: [holder] }));

    expect((await describe1(volumeId)).Attachments).toMatchObject([{ InstanceId: holder, State: 'detaching' }]);
    await until('available', async () => ((await describe1(volumeId)).State === 'available' ? true : undefined));
  });

  it('answers IncorrectState to a detach of an available volume', async () => {
    const volumeId = await createVolume();

    const detach = clients().ec2.send(new DetachVolumeCommand({ VolumeId: volumeId }));

    await expect(detach).rejects.toMatchObject({ name: 'IncorrectState', $metadata: { httpStatusCode: 400 } });
  });
});

describe('network interfaces behave as on AWS', () => {
  it('refuses to attach an attached ENI; a slow detach keeps it attached (detaching) until the delay has passed', async () => {
    const { ec2 } = clients();
    const [holder, successor] = await Promise.all([launch(), launch()]);
    const subnet = (await ec2.send(new DescribeSubnetsCommand({ Filters: [{ Name: 'availability-zone', Values: [AZ] }] }))).Subnets![0]!.SubnetId!;
    const eniId = (await ec2.send(new CreateNetworkInterfaceCommand({ SubnetId: subnet }))).NetworkInterface!.NetworkInterfaceId!;
    const eni = async () => (await ec2.send(new DescribeNetworkInterfacesCommand({ NetworkInterfaceIds: [eniId] }))).NetworkInterfaces![0]!;
    const { AttachmentId } = await ec2.send(new AttachNetworkInterfaceCommand({ NetworkInterfaceId: eniId, InstanceId: holder, DeviceIndex: 1 }));
    const attachToSuccessor = () => ec2.send(new AttachNetworkInterfaceCommand({ NetworkInterfaceId: eniId, InstanceId: successor, DeviceIndex: 1 }));
    await expect(attachToSuccessor()).rejects.toMatchObject({ name: 'InvalidNetworkInterface.InUse' });

    proxy.setEniDetachDelayMs(1500);
    await ec2.send(new DetachNetworkInterfaceCommand({ AttachmentId }));
    expect(await eni()).toMatchObject({ Status: 'in-use', Attachment: { InstanceId: holder, Status: 'detaching' } });
    await expect(attachToSuccessor()).rejects.toMatchObject({ name: 'InvalidNetworkInterface.InUse' });
    await until('available', async () => ((await eni()).Status === 'available' ? true : undefined));
    await attachToSuccessor();
    expect((await eni()).Attachment).toMatchObject({ InstanceId: successor });
  });
});

describe('routes behave as on AWS', () => {
  it('answers RouteAlreadyExists to a second route for the same destination; an answer lost after the create leaves the route in place', async () => {
    const { ec2 } = clients();
    const vpc = (await ec2.send(new DescribeVpcsCommand({}))).Vpcs![0]!.VpcId!;
    const table = (await ec2.send(new CreateRouteTableCommand({ VpcId: vpc }))).RouteTable!.RouteTableId!;
    proxy.inject({ action: 'CreateRoute', kind: 'lost', times: 1 });
    const subnet = (await ec2.send(new DescribeSubnetsCommand({ Filters: [{ Name: 'vpc-id', Values: [vpc] }] }))).Subnets![0]!.SubnetId!;
    const eni = (await ec2.send(new CreateNetworkInterfaceCommand({ SubnetId: subnet }))).NetworkInterface!.NetworkInterfaceId!;
    const route = { RouteTableId: table, DestinationCidrBlock: '10.77.0.0/16', NetworkInterfaceId: eni };
    await expect(clients({ maxAttempts: 1 }).ec2.send(new CreateRouteCommand(route))).rejects.toThrow();
    await expect(ec2.send(new CreateRouteCommand(route))).rejects.toMatchObject({ name: 'RouteAlreadyExists' });
  });
});

describe('lifecycle signals are recorded and answered OK', () => {
  it('records CompleteLifecycleAction and RecordLifecycleActionHeartbeat with their parameters', async () => {
    const { asg } = clients();
    const hook = { AutoScalingGroupName: 'controllers', LifecycleHookName: 'drain', InstanceId: 'i-0123456789abcdef0' };

    await asg.send(new RecordLifecycleActionHeartbeatCommand(hook));
    const done = await asg.send(new CompleteLifecycleActionCommand({ ...hook, LifecycleActionResult: 'CONTINUE' }));

    expect(done.$metadata.httpStatusCode).toBe(200);
    expect(proxy.recorded('RecordLifecycleActionHeartbeat').map((r) => r.params)).toEqual([expect.objectContaining(hook)]);
    expect(proxy.recorded('CompleteLifecycleAction').map((r) => r.params)).toEqual([
      expect.objectContaining({ ...hook, LifecycleActionResult: 'CONTINUE' }),
    ]);
  });

  it('records SignalResource', async () => {
    const signal = { StackName: 'prod', LogicalResourceId: 'Controllers', UniqueId: 'i-0123456789abcdef0', Status: 'SUCCESS' as const };

    const res = await clients().cfn.send(new SignalResourceCommand(signal));

    expect(res.$metadata.httpStatusCode).toBe(200);
    expect(proxy.recorded('SignalResource').map((r) => r.params)).toEqual([expect.objectContaining(signal)]);
  });
});

describe('injected faults', () => {
  it('throttles a call once; the SDK retries and succeeds', async () => {
    proxy.inject({ action: 'DescribeVolumes', kind: 'throttle', times: 1 });

    const res = await clients().ec2.send(new DescribeVolumesCommand({}));

    expect(res.$metadata.attempts).toBe(2);
  });

  it('throttles in the error shape of each protocol', async () => {
    const { ec2, asg, s3, kms } = clients({ maxAttempts: 1 });
    for (const action of ['DescribeVolumes', 'DescribeAutoScalingGroups', 's3:ListBuckets', 'ListKeys']) proxy.inject({ action, kind: 'throttle' });

    await expect(ec2.send(new DescribeVolumesCommand({}))).rejects.toMatchObject({ name: 'RequestLimitExceeded', $metadata: { httpStatusCode: 503 } });
    await expect(asg.send(new DescribeAutoScalingGroupsCommand({}))).rejects.toMatchObject({ name: 'Throttling', $metadata: { httpStatusCode: 400 } });
    await expect(s3.send(new ListBucketsCommand({}))).rejects.toMatchObject({ name: 'SlowDown', $metadata: { httpStatusCode: 503 } });
    await expect(kms.send(new ListKeysCommand({}))).rejects.toMatchObject({ name: 'ThrottlingException', $metadata: { httpStatusCode: 400 } });
  });

  it('names S3 calls by operation, and the SDK retries 500, 503 and connection resets', async () => {
    const { s3, ec2 } = clients();
    await s3.send(new CreateBucketCommand({ Bucket: 'backups' }));
    proxy.inject({ action: 's3:PutObject', kind: '500', times: 1 });
    proxy.inject({ action: 's3:GetObject', kind: '503', times: 1 });
    proxy.inject({ action: 'DescribeVolumes', kind: 'reset', times: 1 });

    const put = await s3.send(new PutObjectCommand({ Bucket: 'backups', Key: 'etcd/snap.db', Body: 'snapshot' }));
    const get = await s3.send(new GetObjectCommand({ Bucket: 'backups', Key: 'etcd/snap.db' }));
    const described = await ec2.send(new DescribeVolumesCommand({}));

    expect([put.$metadata.attempts, get.$metadata.attempts, described.$metadata.attempts]).toEqual([2, 2, 2]);
    expect(await get.Body!.transformToString()).toBe('snapshot');
  });

  it('delays a call by the given latency', async () => {
    proxy.inject({ action: 'DescribeVolumes', kind: 'latency', ms: 700, times: 1 });
    const started = Date.now();

    await clients().ec2.send(new DescribeVolumesCommand({}));

    expect(Date.now() - started).toBeGreaterThanOrEqual(700);
  });

  it('leaves a hung call to the client timeout', async () => {
    proxy.inject({ action: 'DescribeVolumes', kind: 'hang' });
    const started = Date.now();

    const hung = clients({ maxAttempts: 1, requestTimeout: 500 }).ec2.send(new DescribeVolumesCommand({}));

    await expect(hung).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
